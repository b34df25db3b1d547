"""Prompt templates of the zero-shot classifier (shipped ensemble: ``templates.json`` beside this file)."""
import json
from pathlib import Path
from typing import List, Sequence, Union

DEFAULT_TEMPLATES_FILE = Path(__file__).with_name("templates.json")


class TemplateError(ValueError):
    """A template file or template is unusable (message names it)."""


def read_template_file(path) -> List[str]:
    """Templates of a JSON file: a list of strings, or an object with a ``templates`` list."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TemplateError(f"--templates {path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise TemplateError(f"--templates {path}: not valid JSON ({error})") from None
    templates = content.get("templates") if isinstance(content, dict) else content
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise TemplateError(f"--templates {path}: expected a non-empty JSON list of strings "
                            "(or an object with a 'templates' list)")
    return check_templates(templates, str(path))


def check_templates(templates: Sequence[str], where: str = "templates") -> List[str]:
    """Every template must hold exactly one class-name slot, ``{}`` or ``{c}``."""
    for template in templates:
        try:
            filled = template.format("\0", c="\0")
        except (IndexError, KeyError, ValueError) as error:
            raise TemplateError(f"{where}: template {template!r} is not a format string with '{{}}' "
                                f"or '{{c}}' ({error})") from None
        if filled.count("\0") != 1:
            raise TemplateError(f"{where}: template {template!r} needs exactly one '{{}}' (or '{{c}}') for the class name")
    return list(templates)


def load_templates(templates: Union[None, str, Path, Sequence[str]] = None) -> List[str]:
    """None -> the shipped thermal ensemble; a path -> :func:`read_template_file`; a list -> checked as is."""
    if templates is None:
        return read_template_file(DEFAULT_TEMPLATES_FILE)
    if isinstance(templates, (str, Path)):
        return read_template_file(templates)
    return check_templates(templates)


def prompts_for(classname: str, templates: Sequence[str]) -> List[str]:
    """The prompts of one class: every template filled with ``classname``."""
    return [template.format(classname, c=classname) for template in templates]
