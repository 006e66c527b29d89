"""
Parsing and validating the TOML config: every user mistake is a ConfigError
naming the file, the entry and the key.
"""

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from backplane import ConfigError, load_config
from backplane.config import (
    ListenEntry,
    default_config,
    parse_config,
    read_config,
)
from backplane.protocols import Limits
from tests.helpers import tempDir

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


class ConfigFileTests(SynchronousTestCase):
    def write(self, text: str, name: str = "backplane.toml") -> str:
        path = tempDir(self) / name
        path.write_text(text)
        return str(path)

    def assertConfigError(self, text: str, *fragments: str) -> ConfigError:
        path = self.write(text)
        error = self.assertRaises(ConfigError, read_config, path)
        message = str(error)
        self.assertTrue(message.startswith(path + ": "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error

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
                               "clock[1].interval: must be more than 0.0")
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
            "listen[1].protocol: must be one of 'lines', 'websocket', not 'http'",
        )

    def test_undeclaredBackplane(self):
        self.assertConfigError(
            '[backplane.TIME]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "TMIE"\n',
            "listen[1].subscribe_to: backplane 'TMIE' is not declared",
            "[backplane.TMIE]", "declared: TIME",
        )

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
        relay = service.getServiceNamed("connect[1]").factory
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


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(["backplane", "listen", "connect", "clock", "file", "endpoint",
                        "publish_to", "subscribe_to", "retain", "interval", "path", "x"])


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
