"""open_clip_thermal: thermal (LWIR) perception for OpenCLIP via dual LoRA branches (T-CLIP)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "open_clip_thermal" / "version.py").read_text(), version)

setup(
    name="open_clip_thermal",
    version=version["__version__"],
    description="T-CLIP: thermal-aware CLIP with dual LoRA branches, as an OpenCLIP plug-in",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["open_clip_thermal", "open_clip_thermal.*"]),
    package_data={"open_clip_thermal": ["model_configs/*.json", "tclip_configs/*.json", "ircap/prompts/*.txt",
                                        "ircap/lexicons/*.json", "classify/*.json",
                                        "reproduce/*.json"]},
    python_requires=">=3.10",  # the README's torch==2.14.1 needs 3.10+; nothing is run on 3.9 (end of life)
    install_requires=[
        # Loose ranges: the README's install command picks the exact torch builds. torch>=2.6: from 2.6
        # torch.load defaults to weights_only=True, and open_clip_train's pt_load calls it without the
        # argument (our trainer hook passes weights_only=True itself); torchvision 0.21 pairs with 2.6.
        "torch>=2.6",
        "torchvision>=0.21",
        # 4.x reorganises the trainer and attention; the `training` extra brings pandas and
        # pins webdataset<=0.2.86, which open_clip_train's pipeline needs.
        "open_clip_torch[training]>=3.0,<4",
        "loralib>=0.1.2",
        "webdataset>=0.2.5,<=0.2.86",
        "timm>=0.9",
        "braceexpand>=0.1.7",
        "fsspec>=2023.1",
        "numpy>=1.22",
        "pillow>=9",
        "safetensors>=0.4",
        "scipy>=1.9",
        "tqdm>=4.60",
        "httpx>=0.24",
    ],
    extras_require={
        "plots": ["matplotlib>=3.5"],
        # vector search for large indexes (python -m open_clip_thermal.search; docs/usage.md says why faiss)
        "search": ["faiss-cpu>=1.7.4"],
        # CLIP_benchmark runs (python -m open_clip_thermal.clip_benchmark; docs/benchmark.md); it imports requests undeclared
        "eval": ["clip_benchmark>=1.6", "requests"],
        # ONNX export and its onnxruntime check (python -m open_clip_thermal.export onnx; docs/export.md)
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        # Transformers CLIPModel export (python -m open_clip_thermal.export transformers; docs/export.md): 5.x tokenizer API
        "transformers": ["transformers>=5.0"],
        "dev": ["pytest>=7", "matplotlib>=3.5", "clip_benchmark>=1.6", "requests", "onnx>=1.15", "onnxruntime>=1.17",
                "transformers>=5.0", "faiss-cpu>=1.7.4"],  # faiss: so CI runs the search tests of the faiss path
    },
    entry_points={
        "console_scripts": [
            "tclip-train=open_clip_thermal.train:main",
            "tclip-convert=open_clip_thermal.convert:main",
            "tclip-benchmark=open_clip_thermal.benchmark:main",
            "tclip-clip-benchmark=open_clip_thermal.clip_benchmark:main",
            "tclip-ircap=open_clip_thermal.ircap:main",
            "tclip-quickstart=open_clip_thermal.quickstart:main",
            "tclip-reproduce=open_clip_thermal.reproduce:main",
        ],
    },
)
