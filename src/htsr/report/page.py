"""The one page template: a static HTML shell, the inlined chart library, the report's data as JSON, and a small
script that draws the sections (cards, Vega-Lite charts, sortable tables, the linked ESD viewer) from that data.

Every text of the data is put into the page with ``textContent`` by the script, never as HTML, so layer names and
file contents cannot inject markup. The data block escapes ``<`` so it cannot close its ``<script>`` element.
"""

from __future__ import annotations

import html
import json
from string import Template
from typing import Any

from htsr._version import __version__

CSS = r"""
:root{--fg:#1d2430;--muted:#5b6474;--line:#d9dee7;--bg:#f6f8fb;--accent:#1f77b4;--warn:#b35c00;--bad:#c62828}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff}
header{padding:18px 28px;border-bottom:1px solid var(--line);background:var(--bg)}
header h1{margin:0 0 4px;font-size:20px}
header .sub{color:var(--muted);font-size:13px;word-break:break-all}
main{padding:8px 28px 40px;max-width:1500px}
section{margin:22px 0}
h2{font-size:16px;margin:0 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:14px;margin:6px 0;word-break:break-all}
p.caption{color:var(--muted);margin:4px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:150px;max-width:320px;background:#fff}
.card .v{font-size:22px;font-weight:600}
.card .l{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.card .n{color:var(--muted);font-size:12px;margin-top:4px;word-break:break-word}
.card.warn .v{color:var(--warn)}.card.bad .v{color:var(--bad)}
table{border-collapse:collapse;font-size:12.5px}
table.data{width:100%}
table.data th,table.data td{border-bottom:1px solid var(--line);padding:3px 8px;text-align:right;white-space:nowrap}
table.data th{position:sticky;top:0;background:var(--bg);cursor:pointer;user-select:none}
table.data td.t,table.data th.t{text-align:left}
table.data td.w{white-space:normal;word-break:break-all;min-width:220px}
table.data tbody tr.link{cursor:pointer}
table.data tbody tr:hover{background:#eef4fb}
table.data tbody tr.sel{background:#dbeafb}
th .arrow{color:var(--muted);font-size:10px}
.tablewrap{max-height:520px;overflow:auto;border:1px solid var(--line);border-radius:4px}
.controls{display:flex;gap:10px;align-items:center;margin:6px 0;flex-wrap:wrap}
.controls input{padding:4px 8px;min-width:260px;border:1px solid var(--line);border-radius:4px}
.controls select{padding:3px 6px}
.controls .count{color:var(--muted);font-size:12px}
table.kv td{border-bottom:1px solid var(--line);padding:3px 10px;vertical-align:top;word-break:break-all}
table.kv td:first-child{color:var(--muted);white-space:nowrap;word-break:normal}
pre{background:var(--bg);border:1px solid var(--line);padding:10px;overflow:auto;font-size:12.5px}
.chart{overflow-x:auto}
.esdinfo{color:var(--muted);font-size:12.5px;margin:2px 0 6px}
.advice li{margin:4px 0;font-size:15px}
footer{color:var(--muted);font-size:12px;padding:12px 28px;border-top:1px solid var(--line)}
"""

APP_JS = r"""
(function () {
  "use strict";
  var R = window.htsrReport = {views: {}, errors: [], done: false, shown: null, show: function () {}};
  function fail(where, e) {
    R.errors.push(where + ": " + (e && e.message ? e.message : String(e)));
    console.error("htsr report: " + where + ": " + (e && e.stack ? e.stack : e));
  }
  var data;
  try { data = JSON.parse(document.getElementById("htsr-data").textContent); }
  catch (e) { fail("data", e); return; }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v, f) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") {
      if (!isFinite(v)) return "";
      if (f === "int" || Number.isInteger(v)) return String(v);
      if (f === "pct") return (100 * v).toFixed(2) + " %";
      var a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
      return String(Number(v.toPrecision(4)));
    }
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  var rowsByLink = {};  // section id -> {name: tr}
  var esd = {};         // esd section id -> {view, layers, heading, info}
  function show(name, target) {
    var id = target || Object.keys(esd)[0];
    var E = esd[id];
    if (!E) return Promise.resolve(false);
    R.shown = name;
    Object.keys(rowsByLink).forEach(function (k) {
      var m = rowsByLink[k];
      Object.keys(m).forEach(function (n) { m[n].classList.toggle("sel", n === name); });
    });
    E.heading.textContent = name;
    var d = E.layers[name];
    var meta = E.meta[name] || {};
    var rows = [];
    if (d && d.hist) {
      var ys = d.hist.map(function (h) { return h[2]; }).concat((d.rand_hist || []).map(function (h) { return h[2]; }));
      var y0 = Math.min.apply(null, ys) / 3;
      d.hist.forEach(function (h) { rows.push({p: "density", s: "ESD", x: h[0], x2: h[1], y: h[2], y0: y0}); });
      (d.rand_hist || []).forEach(function (h) {
        rows.push({p: "density", s: "randomized", x: h[0], x2: h[1], y: h[2], y0: y0});
      });
      (d.fit || []).forEach(function (q) { rows.push({p: "density", s: "power-law fit", x: q[0], y: q[1]}); });
      (d.ccdf || []).forEach(function (q) { rows.push({p: "ccdf", s: "ESD", x: q[0], y: q[1]}); });
      (d.rand_ccdf || []).forEach(function (q) { rows.push({p: "ccdf", s: "randomized", x: q[0], y: q[1]}); });
      (d.fit_ccdf || []).forEach(function (q) { rows.push({p: "ccdf", s: "power-law fit", x: q[0], y: q[1]}); });
      if (d.xmin) { rows.push({p: "density", s: "xmin", x: d.xmin}); rows.push({p: "ccdf", s: "xmin", x: d.xmin}); }
      E.info.textContent = meta.info || "";
    } else {
      E.info.textContent = (meta.info ? meta.info + " | " : "") +
        (d && d.n === 0 ? "no positive eigenvalue" : E.missing);
    }
    E.count = rows.length;
    return E.view.data("esd", rows).runAsync().then(function () { return true; }, function (e) { fail("esd", e); });
  }
  R.show = show;
  function section(s) {
    var sec = el("section");
    sec.id = s.id;
    if (s.title) sec.appendChild(el("h2", null, s.title));
    if (s.caption) sec.appendChild(el("p", "caption", s.caption));
    main.appendChild(sec);
    return sec;
  }
  function cards(s, sec) {
    var box = el("div", "cards");
    s.items.forEach(function (c) {
      var card = el("div", "card" + (c.level ? " " + c.level : ""));
      card.appendChild(el("div", "l", c.label));
      card.appendChild(el("div", "v", fmt(c.value, c.fmt)));
      if (c.note) card.appendChild(el("div", "n", c.note));
      box.appendChild(card);
    });
    sec.appendChild(box);
  }
  function kv(s, sec) {
    var t = el("table", "kv");
    s.items.forEach(function (p) {
      var tr = el("tr");
      tr.appendChild(el("td", null, p[0]));
      tr.appendChild(el("td", null, fmt(p[1])));
      t.appendChild(tr);
    });
    sec.appendChild(t);
  }
  function table(s, sec) {
    var cols = s.columns, all = s.rows, state = {key: null, dir: 1, text: "", pick: ""};
    var ctl = el("div", "controls");
    var input = el("input");
    input.type = "search";
    input.placeholder = "filter rows (any column)";
    ctl.appendChild(input);
    var select = null;
    if (s.filter_column) {
      select = el("select");
      select.appendChild(el("option", null, "all " + s.filter_column));
      select.options[0].value = "";
      var seen = {};
      all.forEach(function (r) { seen[String(r[s.filter_column])] = 1; });
      Object.keys(seen).sort().forEach(function (v) {
        var o = el("option", null, v);
        o.value = v;
        select.appendChild(o);
      });
      ctl.appendChild(select);
    }
    var count = el("span", "count");
    ctl.appendChild(count);
    sec.appendChild(ctl);
    var wrap = el("div", "tablewrap"), t = el("table", "data"), thead = el("thead"), tbody = el("tbody");
    var hr = el("tr");
    cols.forEach(function (c) {
      var th = el("th", c.text ? "t" : null, c.label || c.key);
      th.dataset.key = c.key;
      th.appendChild(el("span", "arrow", ""));
      th.addEventListener("click", function () {
        state.dir = state.key === c.key ? -state.dir : 1;
        state.key = c.key;
        hr.querySelectorAll(".arrow").forEach(function (a) { a.textContent = ""; });
        th.lastChild.textContent = state.dir > 0 ? " \u25B2" : " \u25BC";
        draw();
      });
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    t.appendChild(thead);
    t.appendChild(tbody);
    wrap.appendChild(t);
    sec.appendChild(wrap);
    var trs = all.map(function (r) {
      var tr = el("tr", s.link ? "link" : null);
      cols.forEach(function (c) {
        tr.appendChild(el("td", (c.text ? "t" : "") + (c.wrap ? " w" : ""), fmt(r[c.key], c.fmt)));
      });
      tr.dataset.text = cols.map(function (c) { return fmt(r[c.key], c.fmt); }).join(" ").toLowerCase();
      if (s.link && r.name !== undefined) {
        tr.addEventListener("click", function () { show(String(r.name), s.link); });
        (rowsByLink[s.id] = rowsByLink[s.id] || {})[String(r.name)] = tr;
      }
      return tr;
    });
    function cmp(a, b) {
      var x = all[a][state.key], y = all[b][state.key];
      var nx = x === null || x === undefined || (typeof x === "number" && !isFinite(x));
      var ny = y === null || y === undefined || (typeof y === "number" && !isFinite(y));
      if (nx || ny) return nx === ny ? a - b : (nx ? 1 : -1);  // missing values last in both directions
      if (typeof x === "number" && typeof y === "number") return state.dir * (x - y) || a - b;
      return state.dir * String(x).localeCompare(String(y), undefined, {numeric: true}) || a - b;
    }
    function draw() {
      var order = all.map(function (_, i) { return i; });
      if (state.key) order.sort(cmp);
      var words = state.text.toLowerCase().split(/\s+/).filter(Boolean), n = 0;
      while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
      order.forEach(function (i) {
        var ok = words.every(function (w) { return trs[i].dataset.text.indexOf(w) >= 0; });
        if (ok && state.pick) ok = String(all[i][s.filter_column]) === state.pick;
        if (ok) { tbody.appendChild(trs[i]); n++; }
      });
      count.textContent = "showing " + n + " of " + all.length + " rows";
    }
    input.addEventListener("input", function () { state.text = input.value; draw(); });
    if (select) select.addEventListener("change", function () { state.pick = select.value; draw(); });
    draw();
  }
  var pending = [];
  function chart(s, sec) {
    var div = el("div", "chart");
    sec.appendChild(div);
    var p = vegaEmbed(div, s.spec, {actions: false, renderer: "svg"}).then(function (res) {
      R.views[s.id] = res.view;
      if (s.link) {
        res.view.addEventListener("click", function (ev, item) {
          if (item && item.datum && item.datum.name !== undefined) show(String(item.datum.name), s.link);
        });
      }
    });
    pending.push(p.catch(function (e) { fail("chart " + s.id, e); }));
  }
  function esdSection(s, sec) {
    var heading = el("h3", "esdname", "");
    var info = el("div", "esdinfo", "");
    var div = el("div", "chart");
    sec.appendChild(heading);
    sec.appendChild(info);
    sec.appendChild(div);
    var p = vegaEmbed(div, s.spec, {actions: false, renderer: "svg"}).then(function (res) {
      R.views[s.id] = res.view;
      esd[s.id] = {view: res.view, layers: s.layers, meta: s.meta || {}, heading: heading, info: info,
                   missing: s.missing || "no eigenvalues for this layer"};
      if (s.initial !== null && s.initial !== undefined) return show(s.initial, s.id);
    });
    pending.push(p.catch(function (e) { fail("esd " + s.id, e); }));
  }
  var main = document.getElementById("main");
  var draw = {cards: cards, kv: kv, table: table, chart: chart, esd: esdSection,
              text: function (s, sec) { s.paragraphs.forEach(function (t) { sec.appendChild(el("p", null, t)); }); },
              list: function (s, sec) {
                var ul = el("ul", s.cls || null);
                s.items.forEach(function (t) { ul.appendChild(el("li", null, t)); });
                sec.appendChild(ul);
              },
              pre: function (s, sec) { sec.appendChild(el("pre", null, s.text)); }};
  data.sections.forEach(function (s) {
    try { draw[s.type](s, section(s)); } catch (e) { fail("section " + s.id, e); }
  });
  Promise.all(pending).then(function () { R.done = true; document.body.dataset.ready = "1"; });
})();
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="htsr $version">
<title>$title</title>
<style>$css</style>
<script>$bundle</script>
</head>
<body>
<header><h1>$title</h1><div class="sub">$subtitle</div></header>
<main id="main"></main>
<footer>Written by htsr $version ($kind report). Self-contained: it makes no network request.</footer>
<script type="application/json" id="htsr-data">$data</script>
<script>$app</script>
</body>
</html>
""")


def script_safe_json(obj: Any) -> str:
    """JSON (NaN/Inf as null) that cannot end its ``<script>`` element or start a comment inside it."""
    from htsr.io import jsonable

    text = json.dumps(jsonable(obj), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_page(title: str, subtitle: str, kind: str, sections: list[dict], bundle: str) -> str:
    """The whole HTML document."""
    if "</script" in bundle.lower():
        raise ValueError("the chart library's bundle contains '</script': cannot inline it")
    return PAGE.substitute(version=html.escape(__version__), title=html.escape(title), subtitle=html.escape(subtitle),
                           kind=html.escape(kind), css=CSS, bundle=bundle,
                           data=script_safe_json({"kind": kind, "sections": sections}), app=APP_JS)
