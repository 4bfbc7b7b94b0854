/* unitrec atlas: the static page's script (vanilla ES2019, no libraries, no modules).
 *
 * The atlas opens from file://, where Chromium forbids fetch/XHR, so every data file is a
 * script calling one of the loaders on window.unitrecAtlas (JSONP style):
 *   data/manifest.js        unitrecAtlas.manifest({...})            (a <script> in index.html)
 *   data/stimuli-<k>.js     unitrecAtlas.stimuli(k, {...})          (inserted on demand)
 *   data/<key>/table-<k>.js unitrecAtlas.table(key, k, {...})
 *   data/<key>/units-<k>.js unitrecAtlas.units(key, k, {...})
 * The folder layout, data format and DOM hooks are described in the atlas spec (v1).
 *
 * Views are hash routes: "#" sites, "#<site>" one site's unit table, "#<site>/<unit>" one unit.
 * Every text that comes from the data (names, labels, titles) goes in with textContent.
 */
(function () {
  "use strict";

  var PAGE_SIZE = 100;           // table rows in the DOM at most
  var SVG_NS = "http://www.w3.org/2000/svg";

  var state = {
    manifest: null,
    sitesByName: {},             // site name -> manifest entry
    sitesByKey: {},              // site key -> manifest entry
    tables: {},                  // key -> {n, columns: {name: full array}} once every chunk is in
    tableViews: {},              // key -> {sort, desc, filters, page}: kept while browsing
    renderToken: 0               // bumped per route: late chunk arrivals for an old view are dropped
  };

  /* ------------------------------------------------------------------ data loading */

  var received = {};   // file -> data passed to its loader call
  var loading = {};    // file -> promise of that data

  // A loader call: keep the data under its file name; loadScript's onload picks it up.
  function deliver(file, data) {
    received[file] = data;
  }

  // Insert <script src=file> once; resolves with the data its loader call delivered.
  function loadScript(file) {
    if (received[file] !== undefined) return Promise.resolve(received[file]);
    if (loading[file]) return loading[file];
    var p = new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = file;
      s.onload = function () {
        if (received[file] !== undefined) resolve(received[file]);
        else reject(new Error("could not load " + file + ": it did not call its unitrecAtlas loader"));
      };
      s.onerror = function () {
        reject(new Error("could not load " + file + ": the folder is incomplete"));
      };
      document.head.appendChild(s);
    });
    loading[file] = p;
    p.catch(function () { delete loading[file]; });  // a later visit may try again
    return p;
  }

  window.unitrecAtlas = {
    manifest: function (m) { start(m); },
    stimuli: function (k, d) { deliver("data/stimuli-" + k + ".js", d); },
    table: function (key, k, d) { deliver("data/" + key + "/table-" + k + ".js", d); },
    units: function (key, k, d) { deliver("data/" + key + "/units-" + k + ".js", d); }
  };

  // Every table chunk of a site, concatenated into one array per column.
  function loadTable(site, onProgress) {
    if (state.tables[site.key]) return Promise.resolve(state.tables[site.key]);
    var done = 0, n = site.n_table_chunks, files = [];
    for (var k = 0; k < n; k++) files.push("data/" + site.key + "/table-" + k + ".js");
    if (onProgress) onProgress(0, n);
    return Promise.all(files.map(function (f) {
      return loadScript(f).then(function (d) { done++; if (onProgress) onProgress(done, n); return d; });
    })).then(function (chunks) {
      chunks.sort(function (a, b) { return a.start - b.start; });
      var columns = {};
      chunks.forEach(function (c) {
        Object.keys(c.columns).forEach(function (name) {
          if (!columns[name]) columns[name] = [];
          var into = columns[name], from = c.columns[name];
          for (var i = 0; i < from.length; i++) into.push(from[i]);
        });
      });
      var table = {n: columns.unit ? columns.unit.length : 0, columns: columns};
      state.tables[site.key] = table;
      return table;
    });
  }

  // One unit's table row as {column: value}, from the one chunk that holds it.
  function loadRow(site, unit) {
    var k = Math.floor(unit / site.table_chunk);
    return loadScript("data/" + site.key + "/table-" + k + ".js").then(function (c) {
      var row = {}, i = unit - c.start;
      Object.keys(c.columns).forEach(function (name) { row[name] = c.columns[name][i]; });
      return row;
    });
  }

  // The detail fields that hold one entry per unit; any other field (e.g. rf_map_polarities)
  // is one value for the whole chunk.
  var PER_UNIT = ["top", "top_response", "bottom", "bottom_response", "tuning", "tuning_sem", "rf_map", "extras"];

  // One unit's details (top/bottom stimuli, tuning, rf map, extras) as {field: value}.
  function loadDetail(site, unit) {
    var k = Math.floor(unit / site.detail_chunk);
    return loadScript("data/" + site.key + "/units-" + k + ".js").then(function (c) {
      var d = {}, i = unit - c.start;
      Object.keys(c).forEach(function (f) {
        if (f !== "start") d[f] = PER_UNIT.indexOf(f) >= 0 ? c[f][i] : c[f];
      });
      return d;
    });
  }

  // Stimulus rows -> {row: {label, thumb, coords}}, loading the chunks that hold them.
  function loadStimuli(rows) {
    var info = state.manifest.stimuli, chunks = {};
    rows.forEach(function (r) { if (r >= 0) chunks[Math.floor(r / info.chunk)] = true; });
    return Promise.all(Object.keys(chunks).map(function (k) {
      return loadScript("data/stimuli-" + k + ".js");
    })).then(function (list) {
      var out = {};
      rows.forEach(function (r) {
        var c = list.filter(function (c) { return r >= c.start && r < c.start + c.labels.length; })[0];
        if (!c) return;
        var i = r - c.start, coords = {};
        Object.keys(c.coords || {}).forEach(function (name) { coords[name] = c.coords[name][i]; });
        out[r] = {label: c.labels[i], thumb: info.thumbs && c.thumb[i], coords: coords};
      });
      return out;
    });
  }

  /* ------------------------------------------------------------------ small DOM helpers */

  // el("p", {className: "x", "data-a": 1}, "text", childNode, ...): attributes with a dash
  // (data-*, aria-*) are set with setAttribute, others as properties; strings become text nodes.
  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (a) {
      var v = attrs[a];
      if (v === undefined || v === null || v === false) return;
      if (a.indexOf("-") >= 0 || a === "role" || a === "for") node.setAttribute(a, String(v));
      else node[a] = v;
    });
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(node, c); });
    else node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }

  // Text with <wbr> break chances after . / _ : so dotted module paths wrap at their dots.
  function breakable(text) {
    var frag = document.createDocumentFragment();
    String(text).split(/(?<=[./_:])/).forEach(function (part, i) {
      if (i) frag.appendChild(document.createElement("wbr"));
      frag.appendChild(document.createTextNode(part));
    });
    return frag;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (a) { node.setAttribute(a, String(attrs[a])); });
    return node;
  }

  // A definition list from [[term, value, tooltip?], ...]; values may be nodes. Empty values are left out.
  // Each dt/dd pair sits in a <div> (valid in a dl) so a pair never breaks across lines.
  function dl(pairs, attrs) {
    var list = el("dl", attrs);
    pairs.forEach(function (p) {
      if (p[1] === undefined || p[1] === null || p[1] === "") return;
      var numeric = typeof p[1] === "string" && /^(NaN|[-+\d.e ×,]+)$/.test(p[1]);
      list.appendChild(el("div", null, el("dt", {title: p[2] || null}, p[0]),
                          el("dd", {className: numeric ? "num" : null}, p[1])));
    });
    return list;
  }

  function siteHash(site) { return "#" + encodeURIComponent(site.name); }
  function unitHash(site, unit) { return siteHash(site) + "/" + unit; }

  // Numbers for people: 4 significant digits, no exponent for ordinary sizes; null is NaN.
  function fmt(v) {
    if (v === null || v === undefined) return "NaN";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  function shapeText(shape, dims) {
    if (!shape) return "";
    return "(" + shape.join(" × ") + ")" + (dims && dims.length ? " " + dims.join(", ") : "");
  }

  function pairText(p) { return p ? p.join(" × ") : ""; }

  /* ------------------------------------------------------------------ page frame */

  var main, notice;

  function setNotice(text) {
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  function start(manifest) {
    state.manifest = manifest;
    manifest.sites.forEach(function (s) {
      state.sitesByName[s.name] = s;
      state.sitesByKey[s.key] = s;
    });
    var ready = function () {
      main = document.getElementById("main");
      notice = document.getElementById("notice");
      renderHeader();
      window.addEventListener("hashchange", route);
      document.addEventListener("keydown", onKey);
      route();
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
    else ready();
  }

  // index.html loads data/manifest.js right after this file: if the page finished loading
  // without a manifest call, the file is missing or broken.
  window.addEventListener("load", function () {
    if (state.manifest) return;
    var m = document.getElementById("main"), n = document.getElementById("notice");
    m.textContent = "";
    n.textContent = "could not load data/manifest.js: the folder is incomplete";
    n.hidden = false;
  });

  function renderHeader() {
    var m = state.manifest, r = m.recording || {};
    document.title = m.title || "unitrec atlas";
    document.getElementById("home-link").textContent = m.title || "unitrec atlas";
    var bits = [];
    if (r.model) bits.push(r.model);
    if (r.n_recorded !== undefined && r.n_stimuli !== undefined) {
      bits.push(r.n_recorded === r.n_stimuli ? r.n_stimuli + " stimuli" : r.n_recorded + " of " + r.n_stimuli + " stimuli recorded");
    }
    if (r.status) bits.push(r.status);
    if (r.created) bits.push("recorded " + r.created);
    bits.push(m.sites.length + (m.sites.length === 1 ? " site" : " sites"));
    document.getElementById("provenance-summary").textContent = bits.join(" · ");
    var ul = document.getElementById("messages");
    ul.textContent = "";
    (m.messages || []).forEach(function (msg) { ul.appendChild(el("li", null, msg)); });
    ul.hidden = !(m.messages || []).length;
    var foot = document.getElementById("page-footer");
    foot.textContent = "";
    append(foot, ["atlas generated " + (m.generated || "?") + " by unitrec " + (m.unitrec_version || "?"),
                  r.file ? " from " + r.file : ""]);
  }

  /* ------------------------------------------------------------------ routing */

  function decode(s) {
    try { return decodeURIComponent(s); } catch (e) { return s; }
  }

  // "#<site>" or "#<site>/<unit>". Site names may hold "/" (encoded as %2F in our links; a
  // hand-typed raw "/" also works): the whole hash as a site name first, then split at the last "/".
  function parseHash() {
    var raw = location.hash.replace(/^#/, "");
    if (!raw) return {view: "sites"};
    var whole = decode(raw);
    if (state.sitesByName[whole]) return {view: "site", site: state.sitesByName[whole]};
    var slash = raw.lastIndexOf("/");
    var siteName = slash >= 0 ? decode(raw.slice(0, slash)) : whole;
    var site = state.sitesByName[siteName] || state.sitesByKey[siteName];
    if (!site) return {view: "sites", error: "no site " + JSON.stringify(siteName) + " in this atlas"};
    if (slash < 0) return {view: "site", site: site};
    var unitText = decode(raw.slice(slash + 1));
    if (unitText === "") return {view: "site", site: site};
    var unit = /^\d+$/.test(unitText) ? Number(unitText) : NaN;
    if (!site.has_units) {
      return {view: "sites", error: "site " + JSON.stringify(site.name) + " has no unit data in this atlas" +
              (site.note ? " (" + site.note + ")" : "")};
    }
    if (!(unit >= 0 && unit < site.n_units)) {
      return {view: "sites", error: "no unit " + JSON.stringify(unitText) + " in site " + JSON.stringify(site.name) +
              " (units 0 to " + (site.n_units - 1) + ")"};
    }
    return {view: "unit", site: site, unit: unit};
  }

  function route() {
    var r = parseHash();
    var token = ++state.renderToken;
    setNotice(r.error || "");
    main.textContent = "";
    main.className = "view-" + r.view;
    if (r.view === "sites") renderSites();
    else if (r.view === "site") renderSite(r.site, token);
    else renderUnit(r.site, r.unit, token);
    window.scrollTo(0, 0);
  }

  function current(token) { return token === state.renderToken; }

  function fail(token, err) {
    if (!current(token)) return;
    setNotice(err && err.message ? err.message : String(err));
    var l = main.querySelector(".loading");
    if (l) l.remove();
  }

  // Left/right arrows step through units in the unit view (not while typing).
  function onKey(e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    var t = e.target && e.target.tagName;
    if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA") return;
    var link = e.key === "ArrowLeft" ? document.getElementById("unit-prev") :
               e.key === "ArrowRight" ? document.getElementById("unit-next") : null;
    if (link && link.getAttribute("href")) location.hash = link.getAttribute("href");
  }

  /* ------------------------------------------------------------------ sites view */

  // The anatomy of a site as [term, value] pairs (cards, and compact in the site view).
  function anatomy(site) {
    var sources = null;
    if (site.sources && site.sources.length) {
      sources = el("ul", {className: "sources"}, site.sources.map(function (s) {
        return el("li", null, breakable(s.name), el("span", {className: "muted"}, " channels " + s.start + "–" + (s.stop - 1)));
      }));
    }
    return [
      ["module", site.module_type],
      ["shape", shapeText(site.shape, site.dims)],
      // the module's own output, where units were selected or pooled from it
      ["module output", site.module_shape && String(site.module_shape) !== String(site.shape) ?
        "(" + site.module_shape.join(" × ") + ")" : ""],
      ["units", site.n_units !== undefined ? site.n_units.toLocaleString("en-US") : ""],
      ["keep", site.keep],
      ["selection", site.selection],
      ["RF size", pairText(site.rf_size)],
      ["RF stride", pairText(site.rf_stride)],
      ["pool", site.pool],
      ["sources", sources]
    ];
  }

  function renderSites() {
    document.title = state.manifest.title || "unitrec atlas";
    var grid = el("div", {className: "site-grid", id: "sites"});
    state.manifest.sites.forEach(function (site) {
      var card = el("section", {className: "site-card" + (site.has_units ? "" : " no-units"), "data-site": site.name},
        el("h2", null, el("a", {href: siteHash(site)}, breakable(site.name))),
        dl(anatomy(site), {className: "anatomy"}),
        site.note ? el("p", {className: "note"}, site.note) : null);
      grid.appendChild(card);
    });
    main.appendChild(el("h2", {className: "view-title"}, "Sites"));
    main.appendChild(grid);
    main.appendChild(provenanceDetails(false));
  }

  // The recording's provenance as a <dl>; in the unit view it carries id="provenance".
  function provenanceList(withId) {
    var r = state.manifest.recording || {};
    var libs = r.library_versions ? Object.keys(r.library_versions).map(function (k) {
      return k + " " + r.library_versions[k];
    }).join(", ") : "";
    var known = ["file", "status", "run_id", "model", "model_description", "weights_sha256", "created", "finished",
                 "n_stimuli", "n_recorded", "preprocessing", "stimulus_root", "unitrec_version"];
    var pairs = known.map(function (k) { return [k.replace(/_/g, " "), r[k] === undefined ? "" : String(r[k])]; });
    Object.keys(r).forEach(function (k) {   // fields this page does not know yet, as text
      if (known.indexOf(k) < 0 && k !== "library_versions") {
        pairs.push([k.replace(/_/g, " "), typeof r[k] === "object" ? JSON.stringify(r[k]) : String(r[k])]);
      }
    });
    pairs.push(["libraries", libs]);
    return dl(pairs, {className: "provenance", id: withId ? "provenance" : null});
  }

  function provenanceDetails(withId) {
    return el("details", {className: "provenance-box"}, el("summary", null, "Recording provenance"), provenanceList(withId));
  }

  /* ------------------------------------------------------------------ site view */

  function tableView(site) {
    if (!state.tableViews[site.key]) {
      state.tableViews[site.key] = {sort: "unit", desc: false, channel: "", source: "", min: {}, max: {}, page: 0};
    }
    return state.tableViews[site.key];
  }

  function renderSite(site, token) {
    document.title = site.name + " · " + (state.manifest.title || "unitrec atlas");
    main.appendChild(el("nav", {className: "crumbs"}, el("a", {href: "#"}, "all sites"), " / ", site.name));
    main.appendChild(el("h2", {className: "view-title"}, site.name));
    main.appendChild(dl(anatomy(site), {className: "anatomy compact"}));
    if (site.note) main.appendChild(el("p", {className: "note"}, site.note));
    if (!site.has_units) {
      main.appendChild(el("p", {className: "empty"}, "No unit data for this site in the atlas."));
      return;
    }
    var progress = el("p", {className: "loading", id: "table-progress"}, "loading the unit table…");
    main.appendChild(progress);
    loadTable(site, function (done, n) {
      progress.textContent = "loading the unit table: " + done + " of " + n + " chunks";
    }).then(function (table) {
      if (!current(token)) return;
      progress.remove();
      buildTable(site, table);
    }, function (err) { fail(token, err); });
  }

  // Channel filter text -> predicate on channel numbers: "5", "10-20", "1,5,9", "1, 4-6";
  // null when empty; undefined when it cannot be read.
  function channelFilter(text) {
    text = text.trim();
    if (!text) return null;
    var parts = text.split(/[,\s]+/).filter(Boolean), ranges = [];
    for (var i = 0; i < parts.length; i++) {
      var m = /^(\d+)(?:\s*[-–:]\s*(\d+))?$/.exec(parts[i]);
      if (!m) return undefined;
      var a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
      ranges.push([Math.min(a, b), Math.max(a, b)]);
    }
    return function (c) {
      for (var j = 0; j < ranges.length; j++) if (c >= ranges[j][0] && c <= ranges[j][1]) return true;
      return false;
    };
  }

  function numberOrNull(text) {
    if (text === undefined || String(text).trim() === "") return null;
    var v = Number(text);
    return isFinite(v) ? v : null;
  }

  // Every unit (row index) in the order of the chosen column: NaN (null) last either way, ties
  // by unit, ascending. Kept per site and order, so typing in a filter does not sort again.
  function sortedUnits(table, view) {
    var key = view.sort + (view.desc ? " desc" : " asc");
    if (table.sorted && table.sorted.key === key) return table.sorted.units;
    var values = table.columns[view.sort] || table.columns.unit, sign = view.desc ? -1 : 1;
    var units = new Array(table.n);
    for (var i = 0; i < table.n; i++) units[i] = i;
    units.sort(function (a, b) {
      var x = values[a], y = values[b];
      var xn = x === null || x === undefined || (typeof x === "number" && isNaN(x));
      var yn = y === null || y === undefined || (typeof y === "number" && isNaN(y));
      if (xn || yn) return xn === yn ? a - b : (xn ? 1 : -1);
      if (x < y) return -sign;
      if (x > y) return sign;
      return a - b;
    });
    table.sorted = {key: key, units: units};
    return units;
  }

  // The units that pass the filters, in the chosen order.
  function selectUnits(site, table, view) {
    var cols = table.columns, keep = [];
    var byChannel = cols.channel ? channelFilter(view.channel) : null;
    var bounds = site.columns.filter(function (c) { return c.kind === "float" && cols[c.name]; }).map(function (c) {
      return {values: cols[c.name], lo: numberOrNull(view.min[c.name]), hi: numberOrNull(view.max[c.name])};
    }).filter(function (b) { return b.lo !== null || b.hi !== null; });
    var order = sortedUnits(table, view);
    for (var r = 0; r < order.length; r++) {
      var i = order[r];
      if (byChannel && !byChannel(cols.channel[i])) continue;
      if (view.source && cols.source && cols.source[i] !== view.source) continue;
      var ok = true;
      for (var j = 0; j < bounds.length && ok; j++) {
        var v = bounds[j].values[i];
        if (v === null || v === undefined) ok = false;   // NaN passes no bound
        else if (bounds[j].lo !== null && v < bounds[j].lo) ok = false;
        else if (bounds[j].hi !== null && v > bounds[j].hi) ok = false;
      }
      if (ok) keep.push(i);
    }
    return keep;
  }

  function buildTable(site, table) {
    var view = tableView(site);
    var columns = site.columns.filter(function (c) { return table.columns[c.name]; });
    var floats = columns.filter(function (c) { return c.kind === "float"; });

    // --- filters
    var filters = el("form", {className: "filters", id: "filters", onsubmit: function (e) { e.preventDefault(); }});
    if (table.columns.channel) {
      var ch = el("input", {type: "text", id: "filter-channel", value: view.channel, placeholder: "e.g. 5, 10-20, 1,5,9",
                            autocomplete: "off", spellcheck: false,
                            "aria-invalid": channelFilter(view.channel) === undefined ? "true" : null});
      ch.addEventListener("input", function () {
        view.channel = ch.value;
        var bad = channelFilter(ch.value) === undefined;
        ch.setAttribute("aria-invalid", bad ? "true" : "false");
        ch.title = bad ? "channel numbers, ranges (10-20) or lists (1,5,9)" : "";
        view.page = 0;
        refresh();
      });
      filters.appendChild(el("label", {className: "filter"}, el("span", null, "channel"), ch));
    }
    if (table.columns.source) {
      var names = [];
      table.columns.source.forEach(function (s) { if (names.indexOf(s) < 0) names.push(s); });
      var sel = el("select", {id: "filter-source"}, el("option", {value: ""}, "all sources"),
                   names.map(function (s) { return el("option", {value: s}, s); }));
      sel.value = view.source;
      sel.addEventListener("change", function () { view.source = sel.value; view.page = 0; refresh(); });
      filters.appendChild(el("label", {className: "filter"}, el("span", null, "source"), sel));
    }
    floats.forEach(function (c) {
      var mk = function (which) {
        var input = el("input", {type: "number", step: "any", placeholder: which, className: "bound",
                                 "data-filter-min": which === "min" ? c.name : null,
                                 "data-filter-max": which === "max" ? c.name : null,
                                 "aria-label": c.label + " " + which});
        input.value = view[which][c.name] || "";
        input.addEventListener("input", function () { view[which][c.name] = input.value; view.page = 0; refresh(); });
        return input;
      };
      filters.appendChild(el("label", {className: "filter range", title: c.title || null},
                             el("span", null, c.label), mk("min"), el("span", {className: "dash"}, "–"), mk("max")));
    });
    var reset = el("button", {type: "button", id: "filter-reset"}, "clear filters");
    reset.addEventListener("click", function () {
      view.channel = ""; view.source = ""; view.min = {}; view.max = {}; view.page = 0;
      filters.querySelectorAll("input").forEach(function (i) { i.value = ""; i.removeAttribute("aria-invalid"); });
      if (sel) sel.value = "";
      refresh();
    });
    filters.appendChild(reset);
    main.appendChild(filters);

    // --- count and pagination
    var count = el("p", {id: "unit-count", "aria-live": "polite"});
    var prev = el("button", {type: "button", id: "page-prev"}, "← previous");
    var next = el("button", {type: "button", id: "page-next"}, "next →");
    var info = el("span", {id: "page-info"});
    prev.addEventListener("click", function () { view.page--; refresh(); });
    next.addEventListener("click", function () { view.page++; refresh(); });
    main.appendChild(el("div", {className: "table-bar"}, count, el("div", {className: "pager"}, prev, info, next)));

    // --- the table
    var thead = el("thead"), tbody = el("tbody"), headRow = el("tr");
    columns.forEach(function (c) {
      var th = el("th", {"data-column": c.name, className: c.kind, title: c.title || null, tabIndex: 0, scope: "col"},
                  c.label, el("span", {className: "sort-mark", "aria-hidden": "true"}));
      var click = function () {
        if (view.sort === c.name) view.desc = !view.desc;
        else { view.sort = c.name; view.desc = false; }
        view.page = 0;
        refresh();
      };
      th.addEventListener("click", click);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); click(); } });
      headRow.appendChild(th);
    });
    thead.appendChild(headRow);
    var tableNode = el("table", {id: "unit-table", "data-site": site.name}, thead, tbody);
    var wrap = el("div", {className: "table-wrap"}, tableNode);   // scrolls, under a sticky header
    main.appendChild(wrap);
    var bottomPager = el("div", {className: "pager bottom"});
    main.appendChild(bottomPager);

    function refresh() {
      var units = selectUnits(site, table, view);
      var pages = Math.max(1, Math.ceil(units.length / PAGE_SIZE));
      view.page = Math.min(Math.max(0, view.page), pages - 1);
      var from = view.page * PAGE_SIZE, to = Math.min(units.length, from + PAGE_SIZE);
      count.textContent = units.length.toLocaleString("en-US") + " of " + table.n.toLocaleString("en-US") + " units";
      info.textContent = units.length ? "rows " + (from + 1) + "–" + to + " · page " + (view.page + 1) + " of " + pages : "no rows";
      prev.disabled = view.page === 0;
      next.disabled = view.page >= pages - 1;
      headRow.querySelectorAll("th").forEach(function (th) {
        var on = th.getAttribute("data-column") === view.sort;
        if (on) th.setAttribute("aria-sort", view.desc ? "descending" : "ascending");
        else th.removeAttribute("aria-sort");
        th.querySelector(".sort-mark").textContent = on ? (view.desc ? " ▼" : " ▲") : "";
      });
      tbody.textContent = "";
      var frag = document.createDocumentFragment();
      for (var r = from; r < to; r++) {
        var u = units[r], href = unitHash(site, table.columns.unit[u]);
        var tr = el("tr", {"data-unit": table.columns.unit[u]});
        columns.forEach(function (c, ci) {
          var v = table.columns[c.name][u];
          var td = el("td", {className: c.kind + (v === null ? " nan" : ""), "data-column": c.name});
          if (ci === 0) td.appendChild(el("a", {href: href}, fmt(v)));
          else td.textContent = c.kind === "float" ? fmt(v) : (v === null || v === undefined ? "" : String(v));
          tr.appendChild(td);
        });
        frag.appendChild(tr);
      }
      tbody.appendChild(frag);
      wrap.scrollTop = 0;   // a new page, order or filter starts at its first row
      if (!units.length) {
        tbody.appendChild(el("tr", {className: "empty-row"}, el("td", {colSpan: columns.length}, "no unit passes the filters")));
      }
      // the bottom pager repeats the buttons' actions for long pages
      bottomPager.textContent = "";
      if (to - from > 20) {
        var p2 = el("button", {type: "button", disabled: prev.disabled}, "← previous");
        var n2 = el("button", {type: "button", disabled: next.disabled}, "next →");
        p2.addEventListener("click", function () { prev.click(); tableNode.scrollIntoView(); });
        n2.addEventListener("click", function () { next.click(); tableNode.scrollIntoView(); });
        append(bottomPager, [p2, el("span", null, info.textContent), n2]);
      }
    }

    // Clicking anywhere in a row opens the unit (the first cell holds the real link).
    tbody.addEventListener("click", function (e) {
      if (e.target.closest("a")) return;
      var tr = e.target.closest("tr[data-unit]");
      if (tr) location.hash = unitHash(site, tr.getAttribute("data-unit"));
    });
    refresh();
  }

  /* ------------------------------------------------------------------ unit view */

  // "channel 5, y 3, x 3": the unit's dims, or (for selected units, whose dim is "unit") its
  // integer coordinate columns; "unit 17" when it has none.
  function unitName(site, unit, row) {
    var names = (site.dims || []).filter(function (d) { return d !== "unit" && row && row[d] !== undefined; });
    if (!names.length) {
      names = site.columns.filter(function (c) {
        return c.kind === "int" && c.name !== "unit" && row && row[c.name] !== undefined && row[c.name] !== null;
      }).map(function (c) { return c.name; });
    }
    return names.length ? names.map(function (d) { return d + " " + row[d]; }).join(", ") : "unit " + unit;
  }

  function renderUnit(site, unit, token) {
    var view = el("article", {id: "unit-view", "data-site": site.name, "data-unit": unit});
    main.appendChild(view);
    var loadingLine = el("p", {className: "loading"}, "loading unit " + unit + "…");
    view.appendChild(loadingLine);
    var row, detail;
    Promise.all([loadRow(site, unit), loadDetail(site, unit)]).then(function (got) {
      row = got[0]; detail = got[1];
      var rows = [].concat(detail.top || [], detail.bottom || []);
      return loadStimuli(rows);
    }).then(function (stimuli) {
      if (!current(token)) return;
      loadingLine.remove();
      fillUnit(view, site, unit, row, detail, stimuli);
    }, function (err) { fail(token, err); });
  }

  function fillUnit(view, site, unit, row, detail, stimuli) {
    var name = unitName(site, unit, row);
    document.title = site.name + " · " + name + " · " + (state.manifest.title || "unitrec atlas");
    var permalink = location.href.split("#")[0] + unitHash(site, unit);
    var prevLink = unit > 0 ? el("a", {id: "unit-prev", href: unitHash(site, unit - 1), rel: "prev"}, "← unit " + (unit - 1)) :
                              el("span", {id: "unit-prev", className: "disabled"}, "← first unit");
    var nextLink = unit < site.n_units - 1 ? el("a", {id: "unit-next", href: unitHash(site, unit + 1), rel: "next"}, "unit " + (unit + 1) + " →") :
                                             el("span", {id: "unit-next", className: "disabled"}, "last unit →");
    view.appendChild(el("nav", {className: "crumbs unit-nav"},
      el("a", {href: "#"}, "all sites"), " / ", el("a", {id: "back-to-site", href: siteHash(site)}, site.name),
      " / ", "unit " + unit,
      el("span", {className: "nav-right"}, prevLink, nextLink,
         el("a", {id: "permalink", href: permalink, title: "link to this unit"}, "permalink"))));
    view.appendChild(el("h2", {id: "unit-title", className: "view-title"}, site.name + " · " + name));

    // coordinates: every table column, and the rf centre
    var pairs = site.columns.map(function (c) {
      var v = row[c.name];
      if (v === undefined) return [c.label, ""];
      return [c.label, c.kind === "float" ? fmt(v) : (v === undefined || v === null ? "" : breakable(v)), c.title];
    });
    if (row.rf_center_y !== undefined && row.rf_center_y !== null) {
      pairs.push(["RF centre (y, x)", fmt(row.rf_center_y) + ", " + fmt(row.rf_center_x)]);
    }
    if (site.rf_size) pairs.push(["RF size", pairText(site.rf_size)]);
    var coords = dl(pairs, {className: "coordinates", id: "unit-coordinates"});

    var top = el("section", {className: "panel stimuli-panel"},
                 el("h3", null, "Top stimuli", el("span", {className: "muted"}, " highest response first")),
                 stimulusStrip("top-stimuli", site, row, detail.top, detail.top_response, stimuli));
    var bottom = el("section", {className: "panel stimuli-panel"},
                    el("h3", null, "Bottom stimuli", el("span", {className: "muted"}, " lowest response first")),
                    stimulusStrip("bottom-stimuli", site, row, detail.bottom, detail.bottom_response, stimuli));
    var tr = detail.top_response || [], br = detail.bottom_response || [];
    if (tr.length && br.length && tr[0] !== null && tr[0] === br[0]) {   // highest == lowest: a flat unit
      top.appendChild(el("p", {className: "note flat"}, "Every stimulus gave this unit the same response (" + fmt(tr[0]) +
                         "): the ranks only follow the stimulus order."));
    }
    var side = el("section", {className: "panel coords-panel"}, el("h3", null, "Unit"), coords);
    view.appendChild(el("div", {className: "unit-grid"}, side, el("div", {className: "strips"}, top, bottom)));

    var figures = el("div", {className: "unit-figures"});
    if (site.tuning && detail.tuning) {
      figures.appendChild(el("section", {className: "panel"}, el("h3", null, "Tuning by " + site.tuning.by),
        tuningPlot(site.tuning, detail.tuning, detail.tuning_sem)));
    }
    // the builder's map images: one tile per polarity of the sparse-noise squares, side by side,
    // or the one spike-triggered average of white noise
    var polarities = site.rf_map_polarities || detail.rf_map_polarities;
    if (detail.rf_map) {
      var caption = site.rf_map_method === "spike_triggered_average"
        ? "Spike-triggered average of the white noise: red where brighter pixels raised the response, " +
          "blue where darker ones did; the outline is the receptive field."
        : Array.isArray(polarities) ? polarities.join(", ") + " squares, left to right: red above the mean " +
          "response, blue below; the outline is the receptive field." : null;
      figures.appendChild(el("section", {className: "panel"}, el("h3", null, "Receptive-field map"),
        el("figure", {id: "rf-map"}, el("img", {src: detail.rf_map, alt: "receptive-field map of unit " + unit}),
           caption ? el("figcaption", {className: "muted"}, caption) : null)));
    }
    if (detail.extras && detail.extras.length) {
      var extras = el("div", {id: "extras"});
      detail.extras.forEach(function (x) {
        extras.appendChild(el("figure", {className: "extra", "data-kind": x.kind},
          el("img", {src: x.image, alt: x.title || x.kind}),
          el("figcaption", null, el("strong", null, x.title || x.kind),
             x.score !== undefined && x.score !== null ? el("span", null, " score " + fmt(x.score)) : null,
             x.file ? el("span", {className: "muted file"}, x.file) : null)));
      });
      figures.appendChild(el("section", {className: "panel"}, el("h3", null, "Visualisations"), extras));
    }
    if (figures.childNodes.length) view.appendChild(figures);
    view.appendChild(el("section", {className: "panel"}, el("h3", null, "Recording"), provenanceList(true)));
  }

  // #top-stimuli / #bottom-stimuli: one figure per stored rank (rows of -1 are no stimulus).
  function stimulusStrip(id, site, row, rows, responses, stimuli) {
    var strip = el("div", {id: id, className: "stimulus-strip"});
    (rows || []).forEach(function (r, rank) {
      if (r === null || r < 0) return;
      var s = stimuli[r] || {label: "stimulus " + r, thumb: false, coords: {}};
      var resp = responses ? responses[rank] : null;
      var tip = [s.label].concat(Object.keys(s.coords).map(function (k) { return k + " " + s.coords[k]; })).join("\n");
      var frame = el("div", {className: "thumb-frame", title: tip});
      var box = function () { return el("div", {className: "thumb-label"}, breakable(s.label)); };
      if (s.thumb) {
        var img = el("img", {src: "thumbs/" + r + ".jpg", alt: s.label});
        img.addEventListener("error", function () { img.replaceWith(box()); });
        frame.appendChild(img);
      } else {
        frame.appendChild(box());
      }
      var rf = rfBox(site, row);
      if (rf) frame.appendChild(rf);
      strip.appendChild(el("figure", {className: "stimulus", "data-index": r, "data-label": s.label,
                                      "data-response": resp === null || resp === undefined ? "NaN" : String(resp),
                                      "data-rank": rank + 1},
        frame,
        el("figcaption", null, el("span", {className: "rank"}, "#" + (rank + 1)), " ",
           el("span", {className: "response"}, fmt(resp)), el("span", {className: "label"}, breakable(s.label)))));
    });
    if (!strip.childNodes.length) strip.appendChild(el("p", {className: "empty"}, "no stimuli stored"));
    return strip;
  }

  // The receptive field as a box in percent of the stimulus (input pixels -> shown size),
  // centred on the unit's rf centre, of the site's rf size, clipped to the image.
  function rfBox(site, row) {
    var size = site.rf_size, input = state.manifest.stimuli.input_size;
    if (!size || !input || !row || row.rf_center_y === null || row.rf_center_y === undefined) return null;
    var y0 = Math.max(0, row.rf_center_y - size[0] / 2), y1 = Math.min(input[0], row.rf_center_y + size[0] / 2);
    var x0 = Math.max(0, row.rf_center_x - size[1] / 2), x1 = Math.min(input[1], row.rf_center_x + size[1] / 2);
    if (y1 <= y0 || x1 <= x0) return null;
    var box = el("div", {className: "rf", title: "receptive field " + pairText(size)});
    box.style.top = (100 * y0 / input[0]) + "%";
    box.style.height = (100 * (y1 - y0) / input[0]) + "%";
    box.style.left = (100 * x0 / input[1]) + "%";
    box.style.width = (100 * (x1 - x0) / input[1]) + "%";
    return box;
  }

  // #tuning: mean response per level (evenly spaced on x, labelled by level) with ± sem bars.
  function tuningPlot(tuning, mean, sem) {
    var W = 370, H = 210, L = 50, R = 10, T = 10, B = 40;
    var levels = tuning.levels, n = levels.length;
    var lo = Infinity, hi = -Infinity;
    mean.forEach(function (m, i) {
      if (m === null) return;
      var e = sem && sem[i] !== null ? sem[i] : 0;
      lo = Math.min(lo, m - e); hi = Math.max(hi, m + e);
    });
    var root = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img", id: "tuning", class: "tuning"});
    var title = svg("title");
    title.textContent = "mean response by " + tuning.by + (sem ? " (± sem)" : "");
    root.appendChild(title);
    if (!isFinite(lo)) {
      var t = svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis-label"});
      t.textContent = "no responses";
      root.appendChild(t);
      return root;
    }
    if (lo > 0 && lo < 0.5 * hi) lo = 0;   // start at 0 when that does not squash the curve
    if (hi === lo) { hi += 1; lo -= 1; }
    var pad = 0.06 * (hi - lo); hi += pad; if (lo !== 0) lo -= pad;
    var x = function (i) { return n === 1 ? (L + W - R) / 2 : L + 14 + i * (W - R - L - 28) / (n - 1); };
    var y = function (v) { return T + (H - T - B) * (hi - v) / (hi - lo); };
    // axes, y ticks and grid
    root.appendChild(svg("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"}));
    root.appendChild(svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis"}));
    niceTicks(lo, hi, 5).forEach(function (v) {
      root.appendChild(svg("line", {x1: L, y1: y(v), x2: W - R, y2: y(v), class: "grid"}));
      var tl = svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick"});
      tl.textContent = fmt(v);
      root.appendChild(tl);
    });
    var every = Math.ceil(n / 12);   // at most ~12 level labels
    levels.forEach(function (lev, i) {
      if (i % every) return;
      var tl = svg("text", {x: x(i), y: H - B + 16, "text-anchor": "middle", class: "tick"});
      tl.textContent = String(lev);
      root.appendChild(tl);
    });
    var xl = svg("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label"});
    xl.textContent = tuning.by;
    root.appendChild(xl);
    var yl = svg("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label",
                          transform: "rotate(-90 12 " + (T + H - B) / 2 + ")"});
    yl.textContent = "mean response";
    root.appendChild(yl);
    // sem bars, line, points
    var d = "";
    mean.forEach(function (m, i) {
      if (m === null) return;
      var e = sem && sem[i] !== null ? sem[i] : 0;
      if (e > 0) root.appendChild(svg("line", {x1: x(i), y1: y(m - e), x2: x(i), y2: y(m + e), class: "sem"}));
      d += (d ? " L" : "M") + x(i).toFixed(1) + " " + y(m).toFixed(1);
    });
    root.appendChild(svg("path", {d: d, class: "curve"}));
    mean.forEach(function (m, i) {
      if (m === null) return;
      var c = svg("circle", {cx: x(i), cy: y(m), r: 3.5, class: "point", "data-level": levels[i], "data-mean": m});
      var tt = svg("title");
      tt.textContent = tuning.by + " " + levels[i] + ": " + fmt(m) + (sem && sem[i] !== null ? " ± " + fmt(sem[i]) : "");
      c.appendChild(tt);
      root.appendChild(c);
    });
    return root;
  }

  // About `count` round tick values between lo and hi.
  function niceTicks(lo, hi, count) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / count)));
    var err = span / count / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }
})();
