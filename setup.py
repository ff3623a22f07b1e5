#!/usr/bin/env python
# rsloss_d2: ranking-based and long-tail losses for Detectron2.
# Install through `bash tools/install.sh`, which also installs torch and detectron2
# (detectron2 is not on PyPI under its own name, so it is not listed in install_requires).
from setuptools import find_packages, setup

setup(
    name="rsloss_d2",
    version="0.1.0",
    description="Rank & Sort, aLRP, AP losses and oLRP evaluation for Detectron2",
    packages=find_packages(include=["rsloss_d2", "rsloss_d2.*"]),
    # the C source of the ranking losses' CPU path, compiled on first use
    package_data={"rsloss_d2.losses": ["csrc/*.c"]},
    python_requires=">=3.11",
    install_requires=[
        "numpy>=1.24",
        "pycocotools>=2.0.7",
        "lvis==0.5.3",
        "fvcore",
        "opencv-python-headless",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # tools/deploy: ONNX export and ONNX Runtime (CPU) for exported models; training does not
        # import them (tools/install.sh installs the versions pinned in constraints.txt)
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
    entry_points={
        "console_scripts": [
            "rsloss-make-shapes=rsloss_d2.data.synthetic:main",
        ]
    },
)
