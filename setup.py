from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="backplane",
    version="0.1.0",
    description="Distribute lines of data from many sources to many destinations "
    "through named backplanes: a Twisted service.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests*", "bench*"]) + ["twisted.plugins"],
    package_data={"backplane": ["py.typed"]},
    install_requires=[
        "Twisted>=23.8.0",
        "autobahn>=20.12.3",  # the lowest verified; the fix for CVE-2020-35678
        "zope.interface>=5.0",
        "tomli>=1.1.0; python_version < '3.11'",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.80",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
