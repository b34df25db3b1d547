"""The errors of the search package that are bad input (one line on the console, exit status 2)."""


class SearchError(ValueError):
    """Bad input: a missing or empty folder, a bad option value, an unusable index (names the input)."""


class ModelMismatchError(SearchError):
    """The model given would make embeddings that cannot be compared with the index's."""
