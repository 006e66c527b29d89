"""
Parsing and validating the TOML config: every user mistake is a ConfigError
naming the file, the entry and the key.
"""

import os
import re
import sys
from ipaddress import ip_network
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from backplane import ConfigError, load_config
from backplane.config import (
    AuthEntry,
    ListenEntry,
    MonitorEntry,
    UserEntry,
    default_config,
    parse_config,
    read_config,
)
from backplane.protocols import Limits
from tests.certs import Certificates
from tests.helpers import tempDir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FULL = """\
[backplane.TIME]
retain = 1

[backplane.LOGGER]

[[clock]]
publish_to = "TIME"
interval = 0.5

[[listen]]
endpoint = "tcp:1500"
subscribe_to = "TIME"
max_clients = 100
slow = "drop"

[[listen]]
endpoint = "tcp:1501"
publish_to = "LOGGER"
max_line_length = 1024

[[connect]]
endpoint = "tcp:host=upstream.example.org:port=1600"
publish_to = "LOGGER"
max_delay = 30

[[file]]
subscribe_to = "LOGGER"
path = "log.data"
"""


class ConfigTestCase(SynchronousTestCase):
    """
    Writes config files and checks the errors they give.
    """

    def write(self, text: str, name: str = "backplane.toml") -> str:
        path = tempDir(self) / name
        path.write_text(text)
        return str(path)

    def assertConfigError(self, text: str, *fragments: str) -> ConfigError:
        path = self.write(text)
        error: ConfigError = self.assertRaises(ConfigError, read_config, path)
        message = str(error)
        self.assertTrue(message.startswith(path + ": "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error


class ConfigFileTests(ConfigTestCase):
    def test_full(self):
        path = self.write(FULL)
        config = read_config(path)
        self.assertEqual(sorted(config.backplanes), ["LOGGER", "TIME"])
        self.assertEqual(config.backplanes["TIME"].retain, 1)
        self.assertEqual(config.clock[0].interval, 0.5)
        first, second = config.listen
        self.assertEqual(first.limits, Limits(max_clients=100, slow="drop"))
        self.assertEqual(second.limits.max_line_length, 1024)
        self.assertEqual(second.publish_to, "LOGGER")
        self.assertIsNone(second.subscribe_to)
        self.assertEqual(config.connect[0].max_delay, 30.0)
        self.assertIsInstance(config.connect[0].max_delay, float)
        self.assertEqual(config.connect[0].initial_delay, 1.0)

    def test_filePathRelativeToConfigFolder(self):
        path = self.write(FULL)
        config = read_config(path)
        self.assertEqual(config.file[0].path, os.path.join(os.path.dirname(path), "log.data"))

    def test_absoluteFilePathKept(self):
        path = self.write(FULL.replace('"log.data"', '"/var/log/x.data"'))
        self.assertEqual(read_config(path).file[0].path, "/var/log/x.data")

    def test_defaults(self):
        config = read_config(self.write(
            '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
        ))
        entry = config.listen[0]
        self.assertEqual(entry.limits, Limits())
        self.assertEqual(entry.backlog, 511)
        self.assertEqual(config.backplanes["A"].retain, 0)

    def test_missingFile(self):
        path = str(tempDir(self) / "nope.toml")
        error = self.assertRaises(ConfigError, read_config, path)
        self.assertEqual(str(error), f"{path}: no such file")

    def test_syntaxError(self):
        self.assertConfigError('[backplane.A]\nretain = = 1\n', "not valid TOML", "line 2")

    def test_unknownTable(self):
        self.assertConfigError('[[lisen]]\nendpoint = "tcp:1"\n',
                               "unknown table [lisen]", "did you mean 'listen'?")

    def test_unknownKey(self):
        self.assertConfigError(
            '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
            '[[listen]]\nendpoint = "tcp:2"\nsubscribe_to = "A"\nmax_line_lenght = 5\n',
            "listen[2]: unknown key 'max_line_lenght'", "did you mean 'max_line_length'?",
        )

    def test_unknownKeyInBackplane(self):
        self.assertConfigError('[backplane.A]\nretian = 1\n',
                               "backplane.A: unknown key 'retian'", "'retain'")

    def test_wrongType(self):
        self.assertConfigError(
            '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
            'max_pending = "lots"\n',
            "listen[1].max_pending: must be an integer, not a string 'lots'",
        )

    def test_boolIsNotAnInteger(self):
        self.assertConfigError('[backplane.A]\nretain = true\n',
                               "backplane.A.retain: must be an integer")

    def test_intAcceptedAsFloat(self):
        config = read_config(
            self.write('[backplane.A]\n[[clock]]\npublish_to = "A"\ninterval = 2\n'))
        self.assertEqual(config.clock[0].interval, 2.0)

    def test_outOfRange(self):
        self.assertConfigError('[backplane.A]\n[[clock]]\npublish_to = "A"\ninterval = 0\n',
                               "clock[1].interval: must be 0.001 or more, not 0.0")
        self.assertConfigError('[backplane.A]\nretain = -1\n',
                               "backplane.A.retain: must be 0 or more")

    def test_choice(self):
        self.assertConfigError(
            '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\nslow = "block"\n',
            "listen[1].slow: must be one of 'disconnect', 'drop', not 'block'",
        )

    def test_protocol(self):
        listen = '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
        self.assertEqual(read_config(self.write(listen)).listen[0].protocol, "lines")
        config = read_config(self.write(listen + 'protocol = "websocket"\n'))
        self.assertEqual(config.listen[0].protocol, "websocket")
        self.assertConfigError(
            listen + 'protocol = "http"\n',
            "listen[1].protocol: must be one of 'lines', 'websocket', 'sse', 'redis', not 'http'",
        )

    def test_undeclaredBackplane(self):
        self.assertConfigError(
            '[backplane.TIME]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "TMIE"\n',
            "listen[1].subscribe_to: backplane 'TMIE' is not declared",
            "[backplane.TMIE]", "declared: TIME",
        )

    def test_undeclaredPattern(self):
        """
        C{subscribe_to = "*"} is told that a port serves one backplane, and
        is not told to add C{[backplane.*]}, which is not TOML.
        """
        error = self.assertConfigError(
            '[backplane.TIME]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "*"\n',
            "listen[1].subscribe_to: backplane '*' is not declared: subscribe_to names one "
            "backplane, not a pattern", "declared: TIME",
        )
        self.assertNotIn("[backplane.*]", str(error))

    def test_undeclaredNameThatTOMLQuotes(self):
        """
        The table suggested for a name that is not a bare TOML key is
        quoted, and is valid TOML that declares that name.
        """
        from backplane.config import tableHeader

        for name in ("chat.room", "a b", "caf\u00e9", 'say "hi"'):
            error = self.assertConfigError(
                f'[backplane.TIME]\n[[listen]]\nendpoint = "tcp:1"\n'
                f'subscribe_to = {tableHeader(name)[11:-1]}\n',
                f"add {tableHeader(name)}")
            self.assertIn(tableHeader(name), str(error))
            declared = self.write(tableHeader(name) + "\n")
            self.assertEqual(list(read_config(declared).backplanes), [name])
        self.assertEqual(tableHeader("NEWS"), "[backplane.NEWS]")
        self.assertEqual(tableHeader("chat.room"), '[backplane."chat.room"]')

    def test_neitherDirection(self):
        self.assertConfigError('[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\n',
                               "listen[1]: needs publish_to, subscribe_to, or both")

    def test_missingKey(self):
        self.assertConfigError('[backplane.A]\n[[listen]]\nsubscribe_to = "A"\n',
                               "listen[1]: missing key 'endpoint'")

    def test_unparsableServerEndpoint(self):
        self.assertConfigError(
            '[backplane.A]\n[[listen]]\nendpoint = "tcp:fifteen"\nsubscribe_to = "A"\n',
            "listen[1].endpoint: cannot use endpoint 'tcp:fifteen'",
        )
        self.assertConfigError(
            '[backplane.A]\n[[listen]]\nendpoint = "tcp:1:colour=red"\nsubscribe_to = "A"\n',
            "unknown parameter 'colour'",
        )
        self.assertConfigError(
            '[backplane.A]\n[[listen]]\nendpoint = "carrier-pigeon:1"\nsubscribe_to = "A"\n',
            "Unknown endpoint type: 'carrier-pigeon'",
        )

    def test_unparsableClientEndpoint(self):
        self.assertConfigError(
            '[backplane.A]\n[[connect]]\nendpoint = "tcp:host=x"\npublish_to = "A"\n',
            "connect[1].endpoint: cannot use endpoint 'tcp:host=x'",
        )

    def test_delaysOrdered(self):
        self.assertConfigError(
            '[backplane.A]\n[[connect]]\nendpoint = "tcp:x:1"\npublish_to = "A"\n'
            'initial_delay = 10\nmax_delay = 5\n',
            "connect[1].max_delay: must be at least initial_delay",
        )

    def test_listenMustBeArray(self):
        self.assertConfigError('[backplane.A]\n[listen]\nendpoint = "tcp:1"\n',
                               "listen: must be written [[listen]]")

    def test_backplaneMustBeTable(self):
        self.assertConfigError('backplane = "A"\n', "backplane: must be written [backplane.NAME]")
        self.assertConfigError('[backplane]\nA = 1\n', "backplane.A: must be a table")

    def test_notUtf8(self):
        path = self.write("")
        Path(path).write_bytes(b'[backplane.\xff]\n')
        self.assertIn("not valid TOML", str(self.assertRaises(ConfigError, read_config, path)))

    def test_loadConfigBuildsTheService(self):
        service = load_config(self.write(
            '[backplane.TIME]\nretain = 2\n[backplane.NEWS]\n'
            '[[clock]]\npublish_to = "TIME"\n'
            '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\nsubscribe_to = "TIME"\n'
            '[[file]]\nsubscribe_to = "NEWS"\npath = "news.log"\nrotate_bytes = 100\n'
            '[[connect]]\nendpoint = "tcp:host=127.0.0.1:port=1"\npublish_to = "NEWS"\n'
            'buffer = 7\nmax_delay = 9\n'
        ))
        self.assertEqual(service.names(), ["NEWS", "TIME"])
        self.assertEqual(service.get("TIME").retain, 2)
        self.assertEqual([child.name for child in service],
                         ["file[1]", "connect[1]", "clock[1]", "listen[1]"],
                         "inputs are added last, so that they stop first")
        sink = service.getServiceNamed("file[1]")
        self.assertEqual(sink.rotateBytes, 100)
        self.assertEqual(sink.maxFiles, 10)
        self.assertTrue(sink.path.endswith("news.log"))
        relay = service.getServiceNamed("connect[1]").relay
        self.assertEqual((relay.bufferSize, relay.maxDelay), (7, 9.0))
        self.assertIs(relay.publishTo, service.get("NEWS"))
        self.assertFalse(service.running)


    def test_loadConfigWebSocketPort(self):
        from backplane.protocols import BackplaneFactory
        from backplane.websocket import WebSocketFactory

        service = load_config(self.write(
            '[backplane.TIME]\n[backplane.CHAT]\n'
            '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\nsubscribe_to = "TIME"\n'
            '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\nprotocol = "websocket"\n'
            'publish_to = "CHAT"\nsubscribe_to = "CHAT"\nmax_line_length = 100\n'
            'max_clients = 3\n'
        ))
        lines = service.getServiceNamed("listen[1]").factory
        websocket = service.getServiceNamed("listen[2]").factory
        self.assertIs(type(lines), BackplaneFactory)
        self.assertIsInstance(websocket, WebSocketFactory)
        self.assertEqual(websocket.limits, Limits(max_line_length=100, max_clients=3))
        self.assertIs(websocket.publishTo, service.get("CHAT"))
        self.assertEqual(websocket.websocket.maxMessagePayloadSize, 101)


class DocumentedTests(SynchronousTestCase):
    def test_everyKeyDocumented(self):
        """
        docs/configuration.md has a row for every key of every table.
        """
        import dataclasses

        from backplane.config import _SINGLE_TABLES, _TABLES, BackplaneEntry

        doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
        tables = {"backplane.NAME": BackplaneEntry, **_TABLES, **_SINGLE_TABLES}
        for table, entryType in tables.items():
            self.assertIn(f"[{table}]", doc)
            for spec in dataclasses.fields(entryType):
                if not spec.metadata.get("internal"):
                    self.assertIn(f"| `{spec.name}` |", doc, f"{table}.{spec.name}")


class DefaultConfigTests(SynchronousTestCase):
    def test_embeddedDefault(self):
        config = default_config()
        self.assertEqual(list(config.backplanes), ["TIME"])
        self.assertEqual(config.clock[0].publish_to, "TIME")
        self.assertEqual(config.clock[0].interval, 1.0)
        (listen,) = config.listen
        self.assertEqual(listen.endpoint, "tcp:1500:interface=127.0.0.1")
        self.assertEqual(listen.subscribe_to, "TIME")
        self.assertIsNone(listen.publish_to)


class BacklogTests(SynchronousTestCase):
    def test_addedWhereMissing(self):
        entry = ListenEntry(endpoint="tcp:1500", subscribe_to="A")
        self.assertEqual(entry.description, "tcp:1500:backlog=511")

    def test_userBacklogKept(self):
        entry = ListenEntry(endpoint="tcp:1500:backlog=5", subscribe_to="A", backlog=100)
        self.assertEqual(entry.description, "tcp:1500:backlog=5")

    def test_onlyWhereTheEndpointTakesOne(self):
        entry = ListenEntry(endpoint="systemd:domain=INET:index=0", subscribe_to="A")
        self.assertEqual(entry.description, "systemd:domain=INET:index=0")


PORT = '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'


class MonitorTableTests(ConfigTestCase):
    """
    C{[monitor]}: one table, absent by default.
    """

    def test_monitor(self):
        config = read_config(self.write(
            '[monitor]\nendpoint = "tcp:9100:interface=127.0.0.1"\nallow = ["127.0.0.1"]\n'))
        self.assertEqual(config.monitor, MonitorEntry(
            endpoint="tcp:9100:interface=127.0.0.1", allow=(ip_network("127.0.0.1/32"),)))

    def test_noMonitorByDefault(self):
        self.assertIsNone(read_config(self.write(PORT)).monitor)
        self.assertIsNone(default_config().monitor)

    def test_mustBeOneTable(self):
        self.assertConfigError('[[monitor]]\nendpoint = "tcp:1"\n',
                               "monitor: must be written [monitor] (one table)")
        self.assertConfigError('monitor = "tcp:1"\n', "monitor: must be written [monitor]")

    def test_unknownTableSuggestsMonitor(self):
        self.assertConfigError('[monitr]\n', "unknown table [monitr]", "did you mean 'monitor'?")

    def test_unknownKey(self):
        self.assertConfigError('[monitor]\nendpont = "tcp:1"\n',
                               "monitor: unknown key 'endpont'", "did you mean 'endpoint'?")

    def test_missingEndpoint(self):
        self.assertConfigError('[monitor]\n', "monitor: missing key 'endpoint'")

    def test_badEndpoint(self):
        self.assertConfigError('[monitor]\nendpoint = "tcp:http"\n',
                               "monitor.endpoint: cannot use endpoint 'tcp:http'")

    def test_badAllow(self):
        self.assertConfigError('[monitor]\nendpoint = "tcp:1"\nallow = ["localhost"]\n',
                               "monitor.allow: 'localhost' is not an IP address or network")

    def test_maxClients(self):
        """
        C{max_clients}: 64 by default; the monitor is built with it.
        """
        text = '[monitor]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        monitor = read_config(self.write(text)).monitor
        assert monitor is not None
        self.assertEqual(monitor.max_clients, 64)
        service = load_config(self.write(text + "max_clients = 3\n"))
        self.assertEqual(service.getServiceNamed("monitor").factory.maxClients, 3)

    def test_badMaxClients(self):
        """
        C{max_clients} is a positive integer.
        """
        for value, message in (("0", "must be 1 or more, not 0"),
                               ("-3", "must be 1 or more, not -3"),
                               ('"64"', "must be an integer, not a string '64'"),
                               ("2.5", "must be an integer, not a number 2.5"),
                               ("true", "must be an integer, not true or false True")):
            self.assertConfigError(f'[monitor]\nendpoint = "tcp:1"\nmax_clients = {value}\n',
                                   f"monitor.max_clients: {message}")

    def test_loadConfigBuildsTheMonitorFirst(self):
        from backplane.monitor import MonitorService

        service = load_config(self.write(
            PORT.replace("tcp:1", "tcp:0:interface=127.0.0.1")
            + '[monitor]\nendpoint = "tcp:0:interface=127.0.0.1"\n'))
        first, second = service
        self.assertIsInstance(first, MonitorService)
        self.assertEqual((first.name, second.name), ("monitor", "listen[1]"))
        self.assertIs(first.service, service)

    def test_noMonitorBuilt(self):
        service = load_config(self.write(PORT))
        self.assertEqual([child.name for child in service], ["listen[1]"])


class AllowKeyTests(ConfigTestCase):
    """
    C{allow} on C{[[listen]]}: IP addresses and networks, checked at once.
    """

    def test_networks(self):
        config = read_config(self.write(
            PORT + 'allow = ["127.0.0.0/8", "10.0.0.0/8", "::1", "192.0.2.7", "fe80::/10"]\n'))
        allow = (ip_network("127.0.0.0/8"), ip_network("10.0.0.0/8"), ip_network("::1/128"),
                 ip_network("192.0.2.7/32"), ip_network("fe80::/10"))
        self.assertEqual(config.listen[0].allow, allow)
        self.assertEqual(config.listen[0].limits.allow, allow)

    def test_defaultEveryone(self):
        self.assertIsNone(read_config(self.write(PORT)).listen[0].limits.allow)

    def test_hostBitsSet(self):
        self.assertConfigError(
            PORT + 'allow = ["127.0.0.1", "10.0.0.1/8"]\n',
            "listen[1].allow: '10.0.0.1/8' is not an IP address or network: "
            "10.0.0.1/8 has host bits set (did you mean '10.0.0.0/8'?)")

    def test_notAnAddress(self):
        self.assertConfigError(PORT + 'allow = ["10.0.0.300/8"]\n',
                               "listen[1].allow: '10.0.0.300/8' is not an IP address or network")
        self.assertConfigError(PORT + 'allow = ["127.0.0.0/33"]\n',
                               "listen[1].allow: '127.0.0.0/33' is not")

    def test_notAnArrayOfStrings(self):
        self.assertConfigError(PORT + 'allow = "127.0.0.1"\n',
                               "listen[1].allow: must be an array of IP networks")
        self.assertConfigError(PORT + 'allow = [127]\n',
                               "listen[1].allow: must be an array of IP networks")

    def test_empty(self):
        self.assertConfigError(PORT + 'allow = []\n', "listen[1].allow: must not be empty")

    def test_unknownKeySuggestion(self):
        self.assertConfigError(PORT + 'allowed = ["127.0.0.1"]\n',
                               "listen[1]: unknown key 'allowed'", "did you mean 'allow'?")


class TLSKeyTests(ConfigTestCase):
    """
    TLS on ports: C{ssl:} endpoints, and C{tls_client_ca} for client
    certificates; every bad path is a ConfigError naming the entry and key.
    """

    def setUp(self):
        self.folder = tempDir(self)
        self.certs = Certificates.make(self.folder)

    def ssl(self, extra: str = "", endpoint: str | None = None) -> str:
        return ('[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
                f'[[listen]]\nendpoint = "{endpoint or self.certs.sslEndpoint()}"\n'
                f'publish_to = "A"\n{extra}')

    def test_sslEndpoint(self):
        config = read_config(self.write(self.ssl()))
        self.assertIsNone(config.listen[1].tls_client_ca)

    def test_clientCA(self):
        config = read_config(self.write(self.ssl(f'tls_client_ca = "{self.certs.ca.path}"\n')))
        self.assertEqual(config.listen[1].tls_client_ca, str(self.certs.ca.path))

    def test_clientCARelativeToConfigFolder(self):
        path = self.folder / "backplane.toml"
        path.write_text(self.ssl(f'tls_client_ca = "{self.certs.ca.path.name}"\n'))
        self.assertEqual(read_config(path).listen[1].tls_client_ca, str(self.certs.ca.path))

    def test_clientCABuildsAVerifyingEndpoint(self):
        service = load_config(self.write(self.ssl(f'tls_client_ca = "{self.certs.ca.path}"\n')))
        options = service.getServiceNamed("listen[2]").endpoint._sslContextFactory
        self.assertTrue(options.verify)
        self.assertTrue(options.requireCertificate)
        plain = load_config(self.write(self.ssl()))
        self.assertFalse(plain.getServiceNamed("listen[2]").endpoint._sslContextFactory.verify)

    def test_clientCANeedsSSL(self):
        self.assertConfigError(
            self.ssl(f'tls_client_ca = "{self.certs.ca.path}"\n', endpoint="tcp:2"),
            "listen[2].tls_client_ca: needs an ssl: endpoint, not 'tcp:2'")

    def test_clientCAMissing(self):
        missing = self.folder / "nope.pem"
        self.assertConfigError(
            self.ssl(f'tls_client_ca = "{missing}"\n'),
            f"listen[2].tls_client_ca: cannot use '{missing}': "
            f"No such file or directory: '{missing}'")

    def test_clientCANotACertificate(self):
        self.assertConfigError(
            self.ssl(f'tls_client_ca = "{self.certs.client.key}"\n'),
            "listen[2].tls_client_ca: cannot use", "holds no PEM certificate")
        garbled = self.folder / "garbled.pem"
        garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        self.assertConfigError(self.ssl(f'tls_client_ca = "{garbled}"\n'),
                               "listen[2].tls_client_ca: cannot use", "not a valid PEM")

    def test_clientCAWrongType(self):
        self.assertConfigError(self.ssl("tls_client_ca = true\n"),
                               "listen[2].tls_client_ca: must be a string")

    def test_badKeyPath(self):
        missing = self.folder / "missing.key"
        endpoint = f"ssl:0:privateKey={missing}:certKey={self.certs.server.certificate}"
        self.assertConfigError(
            self.ssl(endpoint=endpoint),
            f"listen[2].endpoint: cannot use endpoint '{endpoint}': "
            f"No such file or directory: '{missing}'")

    def test_keyNotPEM(self):
        endpoint = f"ssl:0:privateKey={self.certs.server.certificate}"
        self.assertConfigError(self.ssl(endpoint=endpoint),
                               "listen[2].endpoint: cannot use endpoint",
                               "not a valid PEM certificate or key")

    def test_tlsClientEndpoint(self):
        """
        C{[[connect]]} takes a C{tls:} endpoint: its certificate paths are
        checked the same way.
        """
        good = (f"tls:127.0.0.1:1600:trustRoots={self.folder}"
                f":certificate={self.certs.client.certificate}:privateKey={self.certs.client.key}")
        trusted = self.folder / "trusted"
        trusted.mkdir()
        (trusted / "ca.pem").write_bytes(self.certs.ca.path.read_bytes())
        good = good.replace(f"trustRoots={self.folder}", f"trustRoots={trusted}")
        connect = '[backplane.A]\n[[connect]]\nendpoint = "{}"\npublish_to = "A"\n'
        self.assertEqual(read_config(self.write(connect.format(good))).connect[0].endpoint, good)
        missing = self.folder / "none"
        self.assertConfigError(connect.format(f"tls:127.0.0.1:1600:trustRoots={missing}"),
                               "connect[1].endpoint: cannot use endpoint",
                               "cannot list the folder: No such file or directory")
        self.assertConfigError(
            connect.format(f"tls:127.0.0.1:1600:certificate={missing}"),
            "connect[1].endpoint: cannot use endpoint", f"No such file or directory: '{missing}'")


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(["backplane", "listen", "connect", "clock", "file", "monitor",
                        "endpoint", "publish_to", "subscribe_to", "retain", "interval", "path",
                        "allow", "tls_client_ca", "x"])


class FuzzTests(SynchronousTestCase):
    @given(st.dictionaries(keys | st.text(max_size=8), toml_values, max_size=5))
    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def test_anyDocumentOnlyRaisesConfigError(self, document):
        """
        Whatever the document holds, parsing either succeeds or raises a
        ConfigError with a message: never another exception.
        """
        try:
            parse_config(document)
        except ConfigError as e:
            self.assertTrue(str(e))

    @given(st.binary(max_size=300))
    @settings(max_examples=300, deadline=None)
    def test_anyBytesOnlyRaiseConfigError(self, data):
        path = tempDir(self) / "fuzz.toml"
        path.write_bytes(data)
        try:
            read_config(path)
        except ConfigError as e:
            self.assertTrue(str(e))


class RedisConfigTests(SynchronousTestCase):
    def test_sharedBackplanes(self):
        config = parse_config({
            "backplane": {"NEWS": {"shared": True}, "LOCAL": {}},
            "redis": {"url": "redis://10.0.0.5:6380/0", "prefix": "prod:", "max_delay": 5},
        })
        self.assertEqual(config.shared, ["NEWS"])
        assert config.redis is not None
        self.assertEqual(config.redis.url, "redis://10.0.0.5:6380/0")
        self.assertEqual(config.redis.prefix, "prod:")
        self.assertEqual(config.redis.max_delay, 5.0)
        self.assertEqual(config.redis.initial_delay, 0.5)

    def test_sharedNeedsRedis(self):
        error = self.assertRaises(ConfigError, parse_config,
                                  {"backplane": {"NEWS": {"shared": True}}})
        self.assertIn("backplane.NEWS.shared: a shared backplane needs a [redis] table",
                      str(error))

    def test_badUrl(self):
        error = self.assertRaises(ConfigError, parse_config, {
            "backplane": {"NEWS": {"shared": True}}, "redis": {"url": "http://x"}})
        self.assertIn("redis.url: bad Redis URL 'http://x'", str(error))

    def test_unknownKey(self):
        error = self.assertRaises(ConfigError, parse_config, {"redis": {"urls": "x"}})
        self.assertIn("redis: unknown key 'urls' (did you mean 'url'?)", str(error))

    def test_mustBeATable(self):
        error = self.assertRaises(ConfigError, parse_config, {"redis": [{"url": "x"}]})
        self.assertIn("redis: must be written [redis]", str(error))

    def test_bridgeBuilt(self):
        from backplane.build import build_service

        service = build_service(parse_config({
            "backplane": {"NEWS": {"shared": True}, "LOCAL": {}},
            "redis": {"url": "redis://127.0.0.1:1/0", "prefix": "t:"},
        }))
        bridge = service.getServiceNamed("redis")
        self.assertEqual(bridge.names, ["NEWS"])
        self.assertEqual(bridge.prefix, "t:")

    def test_noBridgeWithoutSharedBackplanes(self):
        from backplane.build import build_service

        service = build_service(parse_config({
            "backplane": {"LOCAL": {}}, "redis": {"url": "redis://127.0.0.1:1/0"}}))
        self.assertEqual(list(service), [])


HASH = "a" * 64
WEB = ('[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
       'protocol = "websocket"\n')


class UserTableTests(ConfigTestCase):
    """
    C{[[user]]}: a name, a token's hash and/or a certificate, and the
    backplanes it may use.
    """

    def test_users(self):
        config = read_config(self.write(
            '[[user]]\nname = "alice"\ntoken_sha256 = "' + "AB" * 32 + '"\n'
            'publish = ["chat.*", "LOGS"]\nsubscribe = ["*"]\n'
            '[[user]]\nname = "bob"\ncert = "bob.example.com"\n'))
        alice, bob = config.user
        self.assertEqual(alice, UserEntry(name="alice", token_sha256="ab" * 32,
                                          publish=("chat.*", "LOGS"), subscribe=("*",)))
        self.assertEqual(bob, UserEntry(name="bob", cert="bob.example.com"))
        self.assertEqual((bob.publish, bob.subscribe, bob.token_sha256), ((), (), None))

    def test_noneByDefault(self):
        config = read_config(self.write(PORT))
        self.assertEqual(config.user, [])
        self.assertIsNone(config.auth)

    def test_nameRequired(self):
        self.assertConfigError(f'[[user]]\ntoken_sha256 = "{HASH}"\n',
                               "user[1]: missing key 'name'")

    def test_needsTokenOrCert(self):
        self.assertConfigError('[[user]]\nname = "alice"\nsubscribe = ["*"]\n',
                               "user[1]: needs token_sha256, cert, or both",
                               "hash-token --new")

    def test_unique(self):
        self.assertConfigError(
            f'[[user]]\nname = "a"\ncert = "x"\n[[user]]\nname = "a"\ntoken_sha256 = "{HASH}"\n',
            "user[2].name: must be unique: it is the same as user[1]'s")
        self.assertConfigError(
            '[[user]]\nname = "a"\ncert = "x"\n[[user]]\nname = "b"\ncert = "x"\n',
            "user[2].cert: must be unique")
        self.assertConfigError(
            f'[[user]]\nname = "a"\ntoken_sha256 = "{HASH}"\n'
            f'[[user]]\nname = "b"\ncert = "y"\n'
            f'[[user]]\nname = "c"\ntoken_sha256 = "{HASH.upper()}"\n',
            "user[3].token_sha256: must be unique: it is the same as user[1]'s")

    def test_tokenSha256(self):
        error = self.assertConfigError(
            '[[user]]\nname = "a"\ntoken_sha256 = "my-secret-token"\n',
            "user[1].token_sha256: must be the hex SHA-256 of the token, 64 hexadecimal "
            "digits, not 15 characters", "hash-token")
        self.assertNotIn("my-secret-token", str(error), "a pasted token is never repeated")
        self.assertConfigError(f'[[user]]\nname = "a"\ntoken_sha256 = "{"g" * 64}"\n',
                               "not 64 characters")
        self.assertConfigError('[[user]]\nname = "a"\ntoken_sha256 = 5\n',
                               "user[1].token_sha256: must be the hex SHA-256", "not an integer")

    def test_patterns(self):
        user = '[[user]]\nname = "a"\ncert = "a"\n'
        self.assertConfigError(user + 'publish = "chat.*"\n',
                               "user[1].publish: must be an array of backplane names or glob "
                               "patterns")
        self.assertConfigError(user + 'subscribe = [1]\n', "user[1].subscribe: must be an array")
        self.assertConfigError(user + 'subscribe = ["A", ""]\n',
                               "user[1].subscribe: must not hold an empty name")
        self.assertEqual(read_config(self.write(user + "publish = []\n")).user[0].publish, ())

    def test_unknownKey(self):
        self.assertConfigError(f'[[user]]\nname = "a"\ntoken_sha265 = "{HASH}"\n',
                               "user[1]: unknown key 'token_sha265'",
                               "did you mean 'token_sha256'?")

    def test_mustBeArray(self):
        self.assertConfigError('[user]\nname = "a"\n', "user: must be written [[user]]")


class AuthTableTests(ConfigTestCase):
    """
    C{[auth]}: the key of signed tokens, read and checked with the config.
    """

    def setUp(self):
        self.folder = tempDir(self)

    def config(self, text: str, key: bytes | None = None, name: str = "jwt.key"):
        if key is not None:
            (self.folder / name).write_bytes(key)
        path = self.folder / "backplane.toml"
        path.write_text(text)
        return str(path)

    def assertAuthError(self, path: str, *fragments: str):
        message = str(self.assertRaises(ConfigError, read_config, path))
        self.assertTrue(message.startswith(path + ": "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_secretRelativeToTheConfig(self):
        config = read_config(self.config('[auth]\njwt_key_file = "jwt.key"\n', b"k" * 32 + b"\n"))
        self.assertEqual(config.auth, AuthEntry(jwt_key_file=str(self.folder / "jwt.key")))

    def test_publicKey(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        pem = Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (self.folder / "keys").mkdir()
        config = read_config(self.config(
            '[auth]\njwt_key_file = "keys/jwt.pub"\njwt_audience = "backplane"\n'
            'jwt_issuer = "https://app.example.com"\n', pem, "keys/jwt.pub"))
        self.assertEqual(config.auth, AuthEntry(jwt_key_file=str(self.folder / "keys/jwt.pub"),
                                                jwt_audience="backplane",
                                                jwt_issuer="https://app.example.com"))

    def test_missingFile(self):
        path = self.config('[auth]\njwt_key_file = "nope.key"\n')
        self.assertAuthError(path, f"auth.jwt_key_file: cannot use "
                                   f"{str(self.folder / 'nope.key')!r}: cannot read it: "
                                   f"No such file or directory")

    def test_unusableKeys(self):
        text = '[auth]\njwt_key_file = "jwt.key"\n'
        self.assertAuthError(self.config(text, b"short\n"), "auth.jwt_key_file: cannot use",
                             "at least 32 bytes")
        self.assertAuthError(self.config(text, b"x" * (64 * 1024 + 1)), "too big")
        self.assertAuthError(
            self.config(text, b"-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"),
            "private key")

    def test_neverReadsForever(self):
        self.assertAuthError(self.config('[auth]\njwt_key_file = "/dev/zero"\n'),
                             "auth.jwt_key_file: cannot use '/dev/zero': not a regular file")

    def test_keyFileRequired(self):
        self.assertAuthError(self.config("[auth]\n"), "auth: missing key 'jwt_key_file'")
        self.assertAuthError(self.config('[auth]\njwt_key_file = ""\n'),
                             "auth.jwt_key_file: must not be empty")

    def test_mustBeOneTable(self):
        self.assertAuthError(self.config('[[auth]]\njwt_key_file = "k"\n'),
                             "auth: must be written [auth] (one table)")


class AuthKeyTests(ConfigTestCase):
    """
    C{auth = true} on a port or the monitor needs tokens to check against.
    """

    USER = f'[[user]]\nname = "a"\ntoken_sha256 = "{HASH}"\n'

    def test_offByDefault(self):
        config = read_config(self.write(PORT + '[monitor]\nendpoint = "tcp:2"\n'))
        self.assertFalse(config.listen[0].auth)
        assert config.monitor is not None
        self.assertFalse(config.monitor.auth)

    def test_on(self):
        config = read_config(self.write(
            PORT + 'auth = true\n[monitor]\nendpoint = "tcp:2"\nauth = true\n' + self.USER))
        self.assertTrue(config.listen[0].auth)
        assert config.monitor is not None
        self.assertTrue(config.monitor.auth)

    def test_withSignedTokensOnly(self):
        folder = tempDir(self)
        (folder / "jwt.key").write_bytes(b"s" * 40)
        path = folder / "backplane.toml"
        path.write_text(PORT + 'auth = true\n[auth]\njwt_key_file = "jwt.key"\n')
        self.assertTrue(read_config(str(path)).listen[0].auth)

    def test_needsUsersOrKey(self):
        self.assertConfigError(PORT + "auth = true\n",
                               "listen[1].auth: needs a [[user]] table or an [auth] table with "
                               "jwt_key_file")
        self.assertConfigError(PORT + '[monitor]\nendpoint = "tcp:2"\nauth = true\n',
                               "monitor.auth: needs a [[user]] table")

    def test_bool(self):
        self.assertConfigError(PORT + 'auth = "yes"\n' + self.USER,
                               "listen[1].auth: must be true or false, not a string 'yes'")


class OriginsKeyTests(ConfigTestCase):
    """
    C{origins} on a web port: the page origins allowed besides its own.
    """

    def test_origins(self):
        config = read_config(self.write(
            WEB + 'origins = ["https://app.example.com", "http://localhost:3000", '
                  '"http://[::1]:8080"]\n'))
        self.assertEqual(config.listen[0].origins,
                         ("https://app.example.com", "http://localhost:3000", "http://[::1]:8080"))

    def test_defaultNone(self):
        self.assertIsNone(read_config(self.write(WEB)).listen[0].origins)

    def test_starAndEmpty(self):
        self.assertEqual(read_config(self.write(WEB + 'origins = ["*"]\n')).listen[0].origins,
                         ("*",))
        self.assertEqual(read_config(self.write(WEB + "origins = []\n")).listen[0].origins, ())

    def test_notAnOrigin(self):
        self.assertConfigError(WEB + 'origins = ["https://app.example.com/"]\n',
                               "listen[1].origins: 'https://app.example.com/' is not an origin",
                               "scheme://host[:port]")
        self.assertConfigError(WEB + 'origins = ["app.example.com"]\n',
                               "listen[1].origins: 'app.example.com' is not an origin")
        self.assertConfigError(WEB + 'origins = ["https://app.example.com:70000"]\n',
                               "listen[1].origins: 'https://app.example.com:70000' is not an "
                               "origin: '70000' is not a port")

    def test_null(self):
        self.assertConfigError(WEB + 'origins = ["null"]\n',
                               "listen[1].origins: 'null' cannot be listed", "'*'")

    def test_notAnArray(self):
        self.assertConfigError(WEB + 'origins = "https://app.example.com"\n',
                               "listen[1].origins: must be an array of origins")

    def test_webPortsOnly(self):
        self.assertConfigError(PORT + 'origins = ["https://app.example.com"]\n',
                               "listen[1].origins: applies to web ports only (websocket, sse), "
                               "not to protocol 'lines'")


class SecurityDocTests(SynchronousTestCase):
    """
    The config examples of docs/security.md and of configuration.md's new
    tables are valid.
    """

    def tomlBlocks(self, name: str) -> list[str]:
        text = (Path(__file__).parent.parent / "docs" / name).read_text()
        return [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]

    def test_hardenedConfig(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        hardened = self.tomlBlocks("security.md")[-1]
        self.assertIn("[auth]", hardened)
        folder = tempDir(self)
        certs = Certificates.make(folder)
        (folder / "clients-ca.pem").write_bytes(certs.ca.path.read_bytes())
        (folder / "jwt-ed25519.pub").write_bytes(
            Ed25519PrivateKey.generate().public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        hardened = re.sub(r'"ssl:(\d+):privateKey=[^"]+"', f'"{certs.sslEndpoint()}"', hardened)
        path = folder / "backplane.toml"
        path.write_text(hardened)
        config = read_config(str(path))
        self.assertTrue(all(entry.auth for entry in config.listen))
        assert config.monitor is not None
        self.assertTrue(config.monitor.auth)
        self.assertEqual([user.name for user in config.user], ["collector", "prometheus"])
        self.assertEqual(config.listen[1].origins, ("https://app.example.com",))

    def test_configurationExamples(self):
        folder = tempDir(self)
        (folder / "jwt-ed25519.pub").write_bytes(b"k" * 32)
        blocks = [block for block in self.tomlBlocks("configuration.md")
                  if "[[user]]" in block or "[auth]" in block]
        self.assertEqual(len(blocks), 2)
        for block in blocks:
            parse_config(tomllib.loads(block), folder=folder)


class AcksConfigTests(ConfigTestCase):
    """
    C{[[connect]] acks = true}, C{spool}, C{spool_bytes},
    C{spool_fsync_interval} (SPEC section 10).
    """

    RELAY = '[backplane.A]\n[backplane.B]\n[[connect]]\nendpoint = "tcp:host=up:port=1"\n'

    def test_defaultsAndRelativeSpool(self):
        from backplane import outbox

        config = read_config(self.write(self.RELAY + 'subscribe_to = "A"\n'))
        (connect,) = config.connect
        self.assertEqual((connect.acks, connect.spool), (False, None))
        self.assertEqual((connect.spool_bytes, connect.spool_fsync_interval),
                         (outbox.DEFAULT_SPOOL_BYTES, outbox.DEFAULT_SPOOL_FSYNC_INTERVAL))
        path = self.write(self.RELAY + 'subscribe_to = "A"\nacks = true\nspool = "out"\n'
                          'spool_bytes = 1000000\nspool_fsync_interval = 0\n')
        (connect,) = read_config(path).connect
        self.assertEqual(connect.spool, str(Path(path).parent / "out"))
        self.assertEqual((connect.acks, connect.spool_bytes, connect.spool_fsync_interval),
                         (True, 1000000, 0.0))

    def test_mistakes(self):
        relay = self.RELAY + 'subscribe_to = "A"\n'
        self.assertConfigError(relay + 'publish_to = "B"\nacks = true\n', "connect[1].acks",
                               "needs subscribe_to, and no publish_to")
        self.assertConfigError(self.RELAY + 'publish_to = "B"\nacks = true\n',
                               "connect[1].acks")
        self.assertConfigError(relay + 'spool = "out"\n', "connect[1].spool",
                               "add acks = true")
        self.assertConfigError(relay + 'acks = true\nspool_bytes = 100\n',
                               "connect[1].spool_bytes", 'add spool = "DIR"')
        self.assertConfigError(relay + 'spool_fsync_interval = 1\n',
                               "connect[1].spool_fsync_interval")
        self.assertConfigError(relay + 'acks = true\nbuffer = 0\n', "connect[1].buffer",
                               "at least 1")
        self.assertConfigError(relay + 'acks = true\nspool = "out"\nspool_bytes = 0\n',
                               "connect[1].spool_bytes: must be 1 or more")
        self.assertConfigError(relay + 'acks = "yes"\n', "connect[1].acks: must be true or false")
        self.assertConfigError(
            '[backplane.A]\nstore = "here"\n' + relay.split("\n", 1)[1]
            + 'acks = true\nspool = "here"\n', "connect[1].spool",
            "backplane 'A' keeps its store there")
        twice = relay + 'acks = true\nspool = "out"\n'
        self.assertConfigError(twice + twice.split("\n", 2)[2], "connect[2].spool",
                               "connect[1] has this spool already")

    def test_built(self):
        """
        The relay of an entry with acks keeps its lines in an outbox: in
        memory (buffer lines), or in its spool.
        """
        from backplane.relay import RelayService

        service = load_config(self.write(self.RELAY + 'subscribe_to = "A"\nacks = true\n'
                                         "buffer = 7\n"))
        relay = service.getServiceNamed("connect[1]")
        assert isinstance(relay, RelayService)
        assert relay.relay.outbox is not None
        self.assertIsNone(relay.relay.outbox.path)
        path = self.write(self.RELAY + 'subscribe_to = "A"\nacks = true\nspool = "out"\n')
        service = load_config(path)
        relay = service.getServiceNamed("connect[1]")
        assert isinstance(relay, RelayService) and relay.relay.outbox is not None
        self.assertEqual(relay.relay.outbox.path, str(Path(path).parent / "out"))
        self.assertEqual(relay.report()["info"]["spool"],  # type: ignore[index]
                         relay.relay.outbox.path)
        self.successResultOf(relay.relay.close())

    def test_spoolThatCannotBeUsed(self):
        """
        A spool folder that cannot be made is a config error naming the key.
        """
        path = self.write(self.RELAY + 'subscribe_to = "A"\nacks = true\nspool = "out"\n')
        (Path(path).parent / "out").write_text("a file")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.where, "connect[1].spool")
        self.assertIn("cannot make or write the folder", str(error))
