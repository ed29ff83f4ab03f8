"""Packaging that pyproject.toml cannot express: top-level shipped files installed as package data.

``conf/``, ``checkpoints/`` and ``data/fashion-mnist/`` stay at the top level of the repository;
a built wheel carries them as ``splitbench/_shipped/{conf,checkpoints,data}``, where
splitbench.paths finds them. Metadata, dependencies and entry points are in pyproject.toml.
"""
from setuptools import find_packages, setup

SHIPPED = {  # installed package -> (directory in the repository, files it carries)
    "splitbench._shipped.conf": ("conf", ["**/*.yaml"]),
    "splitbench._shipped.checkpoints": ("checkpoints", ["*.pt", "manifest.json"]),
    "splitbench._shipped.data": ("data", ["fashion-mnist/*"]),
}

setup(
    packages=find_packages(include=["splitbench", "splitbench.*", "baselines", "baselines.*"]) + list(SHIPPED),
    package_dir={name: directory for name, (directory, _) in SHIPPED.items()},
    package_data={"splitbench": ["py.typed"], **{name: files for name, (_, files) in SHIPPED.items()}},
    include_package_data=False,
)
