// The status page of backplane's monitor.
//
// Every two seconds it reads `stats` (the monitor's JSON) and draws the
// backplanes (with their message rate, from the difference of `messages_in`
// between two readings), and the services with their state. The live tail
// is an EventSource on `tail/NAME`: each event is a JSON array of lines.
//
// Everything from the server goes into the page as text (textContent), never
// as HTML. Every URL is relative, so the page works under any path.
//
// With `[monitor] auth = true` the page is opened as `/?token=TOKEN`: the
// token goes with every request for data, as `Authorization: Bearer` for
// `stats`, in the URL of the tail (an EventSource can set no header).

"use strict";

(() => {
  const POLL_MILLISECONDS = 2000;
  const HISTORY_SECONDS = 300;
  const MIN_SPAN_SECONDS = 30;
  const SPARK_WIDTH = 300;
  const SPARK_HEIGHT = 44;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  const TOKEN = new URLSearchParams(location.search).get("token");
  const AUTH_HEADERS = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
  const withToken = (url) => (TOKEN ? `${url}?token=${encodeURIComponent(TOKEN)}` : url);

  // An element with a class and text, both optional.
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Formatting.

  const integer = new Intl.NumberFormat("en");

  function count(n) {
    return typeof n === "number" ? integer.format(n) : "–";
  }

  function bytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  function rate(r) {
    if (r === null || r === undefined) return "–";
    if (r >= 100) return integer.format(Math.round(r));
    return r.toFixed(1);
  }

  function duration(seconds) {
    let s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function clockTime(date) {
    return date.toTimeString().slice(0, 8);
  }

  // C0 controls and DEL, which a browser would not show, in caret notation
  // (ESC as ^[, CR as ^M), marked as such; tabs stay tabs.
  const CONTROLS = /[\u0000-\u0008\u000a-\u001f\u007f]/;

  function lineText(text) {
    const span = element("span", "text");
    if (!CONTROLS.test(text)) {
      span.textContent = text;
      return span;
    }
    let plain = "";
    for (const c of text) {
      if (!CONTROLS.test(c)) {
        plain += c;
        continue;
      }
      if (plain) span.append(plain);
      plain = "";
      const code = c.charCodeAt(0);
      const control = element("span", "control", `^${String.fromCharCode(code ^ 0x40)}`);
      control.title = `control character ${code.toString(16).padStart(2, "0")} (hex)`;
      span.append(control);
    }
    if (plain) span.append(plain);
    return span;
  }

  // The header: the server, and whether the page can reach it.

  function showServer(server) {
    const parts = [
      `backplane ${server.version}`,
      `Twisted ${server.twisted}`,
      `Python ${server.python}`,
      `pid ${server.pid}`,
      `up ${duration(server.uptime_seconds)}`,
    ];
    if (typeof server.rss_bytes === "number") parts.push(`${bytes(server.rss_bytes)} resident`);
    if (!server.running) parts.push("stopping");
    $("server").textContent = parts.join(" · ");
  }

  function showConnection(ok, message) {
    const node = $("connection");
    node.className = `connection ${ok ? "ok" : "down"}`;
    node.textContent = message;
  }

  // Backplanes: a card each, kept from one reading to the next.

  const cards = new Map();     // name -> {card, fields}
  let rates = new Map();       // name -> [{t, rate}], t in the server's uptime seconds
  let previous = null;         // the last reading: {pid, uptime, messages: Map}

  // [key in /stats, label, format, what it counts]
  const NUMBERS = [
    ["subscribers", "subscribers", count, "subscribers now"],
    ["publishers", "publishers", count, "network publishers connected now"],
    ["messages_in", "messages", count, "messages published since the start"],
    ["bytes_in", "bytes", bytes, "bytes published since the start"],
    ["deliveries", "deliveries", count, "messages handed to subscribers"],
    ["retain", "retain", count, "messages replayed to each new subscriber"],
    ["dropped", "dropped", count, "messages slow subscribers missed (slow = \"drop\")"],
    ["slow_disconnects", "too slow", count,
     "subscribers disconnected for being more than max_pending behind"],
    ["errors", "errors", count, "subscriber callbacks that failed"],
  ];
  const WARNINGS = new Set(["dropped", "slow_disconnects", "errors"]);

  function makeCard(name) {
    const card = element("article", "card");
    card.dataset.name = name;
    const head = element("div", "card-head");
    head.append(element("h3", "name", name));
    const button = element("button", "tail-button", "Tail");
    button.type = "button";
    button.hidden = !tail.enabled;
    button.title = `show the lines of ${name} as they are published`;
    button.addEventListener("click", () => {
      chooseTail(name);
      $("tail-section").scrollIntoView({ behavior: "smooth", block: "start" });
    });
    head.append(button);
    card.append(head);

    const rateLine = element("p", "rate");
    const rateValue = element("span", "rate-value", "–");
    rateLine.append(rateValue, " messages/s");
    card.append(rateLine);

    const spark = document.createElementNS(SVG, "svg");
    spark.setAttribute("class", "spark");
    spark.setAttribute("viewBox", `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
    spark.setAttribute("preserveAspectRatio", "none");
    spark.setAttribute("role", "img");
    const title = document.createElementNS(SVG, "title");
    const area = document.createElementNS(SVG, "path");
    area.setAttribute("class", "spark-area");
    const line = document.createElementNS(SVG, "path");
    line.setAttribute("class", "spark-line");
    spark.append(title, area, line);
    card.append(spark);

    const numbers = element("dl", "numbers");
    const fields = {};
    for (const [key, label, , what] of NUMBERS) {
      const pair = element("div");
      pair.title = what;
      const value = element("dd");
      pair.append(element("dt", "", label), value);
      numbers.append(pair);
      fields[key] = value;
    }
    card.append(numbers);

    // Its history, for a backplane that keeps one (history or store).
    const historyLine = element("p", "history");
    historyLine.hidden = true;
    card.append(historyLine);
    return { card, fields, rateValue, historyLine, spark: { title, area, line } };
  }

  function drawSpark(spark, points, now) {
    // The last five minutes; until the page has seen that much, what it has
    // seen (at least half a minute), so that the chart starts wide.
    const seen = points.length ? now - points[0].t : 0;
    const span = Math.min(HISTORY_SECONDS, Math.max(MIN_SPAN_SECONDS, seen));
    const start = now - span;
    const top = Math.max(1, ...points.map((p) => p.rate));
    const x = (t) => ((t - start) / span) * SPARK_WIDTH;
    const y = (r) => SPARK_HEIGHT - 1 - (r / top) * (SPARK_HEIGHT - 4);
    if (points.length === 0) {
      spark.line.setAttribute("d", "");
      spark.area.setAttribute("d", "");
    } else {
      const path = points.map((p, i) =>
        `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.rate).toFixed(1)}`).join("");
      spark.line.setAttribute("d", path);
      const first = x(points[0].t).toFixed(1);
      const last = x(points[points.length - 1].t).toFixed(1);
      spark.area.setAttribute("d", `${path}L${last},${SPARK_HEIGHT}L${first},${SPARK_HEIGHT}Z`);
    }
    spark.title.textContent =
      `messages a second over the last ${duration(span)}; the most: ${rate(top)}`;
  }

  function showHistory(line, data) {
    const history = data.history;
    line.hidden = !history;
    if (!history) return;
    const kept = history.messages
      ? `ids ${history.first}–${history.last}, ${count(history.messages)} kept ` +
        `(${bytes(history.bytes)})`
      : `nothing kept yet (next id ${history.last + 1})`;
    line.textContent = `history ${history.epoch}: ${kept}; ` +
      `${count(data.resumes)} resumes, ${count(data.replayed)} replayed, ` +
      `${count(data.gaps)} gaps`;
    line.title = `epoch ${history.epoch}` + (history.path ? `, stored in ${history.path}` : ", in memory");
    line.classList.toggle("warn", data.gaps > 0);
  }

  function showBackplanes(stats) {
    const server = stats.server;
    const backplanes = stats.backplanes || {};
    const names = Object.keys(backplanes).sort();
    const now = server.uptime_seconds;
    // A new process (or counters gone back): the rates start again.
    const restarted = previous !== null &&
      (previous.pid !== server.pid || now < previous.uptime);
    if (restarted) rates = new Map();
    const messages = new Map();

    const container = $("backplanes");
    for (const [name, entry] of cards) {
      if (!(name in backplanes)) {
        entry.card.remove();
        cards.delete(name);
        rates.delete(name);
      }
    }
    const note = container.querySelector(".empty-note");
    if (names.length === 0 && !note) {
      container.append(element("p", "empty-note", "No backplanes."));
    } else if (names.length > 0 && note) {
      note.remove();
    }
    names.forEach((name, index) => {
      const data = backplanes[name];
      messages.set(name, data.messages_in);
      let entry = cards.get(name);
      if (!entry) {
        entry = makeCard(name);
        cards.set(name, entry);
      }
      // Keep the cards in order of name.
      if (container.children[index] !== entry.card) {
        container.insertBefore(entry.card, container.children[index] || null);
      }
      for (const [key, , format] of NUMBERS) {
        const field = entry.fields[key];
        field.textContent = format(data[key]);
        field.classList.toggle("warn", WARNINGS.has(key) && data[key] > 0);
      }
      showHistory(entry.historyLine, data);
      let points = rates.get(name) || [];
      if (previous !== null && !restarted && previous.messages.has(name)) {
        const seconds = now - previous.uptime;
        const more = data.messages_in - previous.messages.get(name);
        if (seconds > 0 && more >= 0) points.push({ t: now, rate: more / seconds });
      }
      points = points.filter((p) => p.t >= now - HISTORY_SECONDS);
      rates.set(name, points);
      const latest = points.length ? points[points.length - 1].rate : null;
      entry.rateValue.textContent = rate(latest);
      drawSpark(entry.spark, points, now);
    });
    previous = { pid: server.pid, uptime: now, messages };
    return names;
  }

  // Services: one row each, drawn anew at each reading.

  const STATES = {
    good: ["listening", "running", "connected", "writing"],
    pending: ["starting", "connecting", "waiting", "backoff"],
    bad: ["failed", "failing", "unreachable"],
  };

  function stateClass(state) {
    for (const [kind, states] of Object.entries(STATES)) {
      if (states.includes(state)) return kind;
    }
    return "";
  }

  function pairs(entries) {
    const list = element("ul", "pairs");
    for (const [key, value] of entries) {
      const item = element("li");
      item.append(element("span", "key", `${key} `), element("span", "value", value));
      list.append(item);
    }
    return list;
  }

  function cell(label, className) {
    const td = element("td", className);
    td.dataset.label = label;
    return td;
  }

  function showServices(services) {
    const rows = [];
    for (const service of services) {
      const tr = element("tr");
      tr.dataset.name = String(service.name);
      tr.append(cell("name", "name"));
      tr.lastChild.textContent = String(service.name);
      tr.append(cell("kind", "kind"));
      tr.lastChild.textContent = String(service.kind);
      const state = cell("state");
      state.append(element("span", `state ${stateClass(service.state)}`,
                           String(service.state ?? "–")));
      tr.append(state);
      const info = Object.entries(service.info || {})
        .filter(([, value]) => value !== null && value !== undefined)
        .map(([key, value]) => [key.replaceAll("_", " "), String(value)]);
      const configuration = cell("configuration");
      configuration.append(pairs(info));
      tr.append(configuration);
      // Gauges, then the counters that are not 0.
      const numbers = [
        ...Object.entries(service.gauges || {}),
        ...Object.entries(service.counters || {}).filter(([, value]) => value !== 0),
      ].map(([key, value]) => [key.replaceAll("_", " "), count(value)]);
      const numbersCell = cell("numbers");
      numbersCell.append(pairs(numbers));
      tr.append(numbersCell);
      rows.push(tr);
    }
    if (rows.length === 0) {
      const tr = element("tr");
      const td = element("td", "empty-note", "Nothing reports statistics.");
      td.colSpan = 5;
      tr.append(td);
      rows.push(tr);
    }
    $("services").tBodies[0].replaceChildren(...rows);
  }

  // The live tail.

  const tail = {
    name: "",
    source: null,
    paused: false,
    waiting: [],     // [{text, time, marker}] not yet shown (bounded by the limit)
    received: 0,
    missed: 0,
    unseen: 0,       // lines received while paused
    scheduled: false,
    enabled: true,
    wanted: null,    // the name in the address, until the first reading
  };

  function limit() {
    return Number($("tail-limit").value) || 200;
  }

  function tailStatus(text, bad) {
    const node = $("tail-status");
    node.textContent = text;
    node.classList.toggle("bad", Boolean(bad));
  }

  function liveStatus() {
    if (!tail.name) return;
    let text = `${tail.name}: live · ${count(tail.received)} lines received`;
    if (tail.missed) text += ` · ${count(tail.missed)} missed while this page fell behind`;
    if (tail.paused) text += ` · paused, ${count(tail.unseen)} not shown yet`;
    tailStatus(text);
  }

  function queue(items) {
    tail.waiting.push(...items);
    const most = limit();
    if (tail.waiting.length > most) tail.waiting.splice(0, tail.waiting.length - most);
    if (!tail.paused && !tail.scheduled) {
      tail.scheduled = true;
      requestAnimationFrame(render);
    }
  }

  function render() {
    tail.scheduled = false;
    if (tail.paused || tail.waiting.length === 0) return;
    const list = $("tail");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    const fragment = document.createDocumentFragment();
    for (const item of tail.waiting) {
      const li = element("li", item.marker ? "marker" : "");
      li.append(element("span", "time", clockTime(item.time)),
                item.marker ? element("span", "text", item.text) : lineText(item.text));
      fragment.append(li);
    }
    tail.waiting = [];
    list.append(fragment);
    const extra = list.children.length - limit();
    for (let i = 0; i < extra; i += 1) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function closeTail() {
    if (tail.source) {
      tail.source.close();
      tail.source = null;
    }
  }

  // The tail was refused: ask once more to read why (a 404 names the
  // known backplanes; a 503 says too many tails are open).
  async function explainRefusal(name, url) {
    const controller = new AbortController();
    try {
      const response = await fetch(url, {
        cache: "no-store", signal: controller.signal, headers: AUTH_HEADERS,
      });
      if (response.ok) {
        controller.abort();
        tailStatus(`${name}: the connection was lost; choose it again to retry`, true);
      } else {
        const reason = (await response.text()).trim();
        tailStatus(`${name}: refused (${response.status}): ${reason}`, true);
      }
    } catch (error) {
      tailStatus(`${name}: cannot reach the server`, true);
    }
  }

  function openTail(name) {
    closeTail();
    tail.name = name;
    tail.received = 0;
    tail.missed = 0;
    tail.unseen = 0;
    tail.waiting = [];
    $("tail").replaceChildren();
    history.replaceState(null, "",
      name ? `#tail=${encodeURIComponent(name)}` : location.pathname + location.search);
    if (!name) {
      tailStatus("Choose a backplane to see its lines as they are published.");
      return;
    }
    const url = withToken(`tail/${encodeURIComponent(name)}`);
    const source = new EventSource(url);
    tail.source = source;
    tailStatus(`${name}: connecting…`);
    source.onopen = () => liveStatus();
    source.onmessage = (event) => {
      const lines = JSON.parse(event.data);
      const time = new Date();
      tail.received += lines.length;
      if (tail.paused) tail.unseen += lines.length;
      queue(lines.map((text) => ({ text, time, marker: false })));
      liveStatus();
    };
    source.addEventListener("dropped", (event) => {
      const missed = Number(event.data);
      tail.missed += missed;
      queue([{ text: `… ${count(missed)} lines missed: this page fell behind …`,
               time: new Date(), marker: true }]);
      liveStatus();
    });
    source.onerror = () => {
      if (tail.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        tail.source = null;
        explainRefusal(name, url);
      } else {
        tailStatus(`${name}: connection lost; reconnecting…`, true);
      }
    };
  }

  function chooseTail(name) {
    const select = $("tail-backplane");
    if (name && ![...select.options].some((option) => option.value === name)) {
      select.append(new Option(name, name));
    }
    select.value = name;
    openTail(name);
  }

  function showTailChoices(names, enabled) {
    const select = $("tail-backplane");
    const current = select.value;
    const known = [...select.options].slice(1).map((option) => option.value);
    if (known.join("\n") !== names.join("\n")) {
      select.replaceChildren(new Option("(choose one)", ""),
                             ...names.map((name) => new Option(name, name)));
      select.value = names.includes(current) ? current : "";
    }
    if (enabled !== tail.enabled) {
      tail.enabled = enabled;
      $("tail-controls").hidden = !enabled;
      $("tail").hidden = !enabled;
      for (const button of document.querySelectorAll(".tail-button")) button.hidden = !enabled;
      if (!enabled) {
        closeTail();
        tail.name = "";
        tailStatus("The live tail is off: the monitor's config has tail = false.");
      }
    }
  }

  function setupTail() {
    $("tail-backplane").addEventListener("change", (event) => openTail(event.target.value));
    $("tail-limit").addEventListener("change", () => {
      const list = $("tail");
      const extra = list.children.length - limit();
      for (let i = 0; i < extra; i += 1) list.firstElementChild.remove();
    });
    $("tail-pause").addEventListener("click", (event) => {
      tail.paused = !tail.paused;
      event.target.setAttribute("aria-pressed", String(tail.paused));
      event.target.textContent = tail.paused ? "Resume" : "Pause";
      tail.unseen = 0;
      if (!tail.paused) render();
      liveStatus();
    });
    $("tail-clear").addEventListener("click", () => {
      tail.waiting = [];
      $("tail").replaceChildren();
    });
    const wanted = /^#tail=(.*)$/.exec(location.hash);
    if (wanted) {
      try {
        tail.wanted = decodeURIComponent(wanted[1]);
      } catch (error) {
        // A hash that is not percent-encoding: no tail.
      }
    }
  }

  // The tail the address asked for (#tail=NAME), once the first reading
  // tells whether there is such a backplane and whether tails are on.
  function openWanted(names) {
    const name = tail.wanted;
    tail.wanted = null;
    if (name === null || !tail.enabled) return;
    if (names.includes(name)) {
      chooseTail(name);
    } else {
      tailStatus(`There is no backplane named ${JSON.stringify(name)}.`, true);
    }
  }

  // Reading the statistics.

  async function poll() {
    try {
      const response = await fetch("stats", { cache: "no-store", headers: AUTH_HEADERS });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const stats = await response.json();
      showServer(stats.server);
      const names = showBackplanes(stats);
      const services = stats.services || [];
      showServices(services);
      const monitor = services.find((service) => service.kind === "monitor");
      showTailChoices(names, !monitor || !monitor.info || monitor.info.tail !== false);
      openWanted(names);
      showConnection(true, `live · ${clockTime(new Date())}`);
    } catch (error) {
      showConnection(false, `cannot read the statistics (${error.message}); retrying`);
    }
    setTimeout(poll, POLL_MILLISECONDS);
  }

  setupTail();
  poll();
})();
