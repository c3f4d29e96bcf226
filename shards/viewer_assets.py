"""The viewer's style and scripts, written beside the pages: plain CSS and JavaScript, nothing loaded from the network.

The index script filters and sorts the rows of data.js in the browser and keeps the filter in the URL's hash, so a
filtered view is a link to share; it builds every cell with textContent, so no text from the data becomes markup.
"""

VIEW_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
a{color:#2a5db0}
#controls{display:flex;flex-wrap:wrap;gap:.6em;align-items:center;margin:.6em 0;padding:.5em;background:#f3f3f3}
#controls input[type=number]{width:5em}
table{border-collapse:collapse}
#samples td,#samples th{border-bottom:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:middle}
#samples th[data-sort]{cursor:pointer;text-decoration:underline dotted}
#samples img{width:96px;display:block}
#samples td.sc{font-size:12px;max-width:22em}
.reject{color:#a02020}
.strip{display:flex;gap:4px;overflow-x:auto;padding-bottom:4px}
.frame{margin:0;flex:0 0 auto;border:3px solid transparent}
.frame img{height:96px;display:block}
.frame figcaption{font-size:11px;text-align:center;color:#555}
.frame.hl{border-color:#e08a00;background:#fff3dc}
.axis,.qa-axis,.lane{position:relative;height:14px;background:#eee;margin:2px 0}
.tick{position:absolute;top:0;width:2px;height:14px;background:#888}
.timeline{margin:.5em 0}
.track{display:flex;align-items:center;gap:.5em}
.lvl{width:5em;font-size:12px;color:#555}
.lane{flex:1;height:26px}
.cap{position:absolute;top:2px;height:22px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;font-size:11px;
 box-sizing:border-box;border:1px solid #fff;padding:2px 3px;cursor:default}
.cap-video{background:#b9d3ee}.cap-segment{background:#c8e6c1}.cap-clip{background:#f4dcb0}
.qa{border:1px solid #ddd;border-radius:4px;padding:.4em .6em;margin:.4em 0;cursor:pointer}
.qa.active{border-color:#e08a00;box-shadow:0 0 0 2px #f6c77a}
.qa .type{font-weight:bold}.qa .fmt,.qa .span{color:#666;font-size:12px}
.evidence{position:absolute;top:0;height:14px;background:#e08a00}
.q{margin:.3em 0}.a{margin:.3em 0;color:#1d5b1d}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em}
.facts dt{color:#555}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-word}
.none,.hint{color:#777;font-style:italic}
"""

INDEX_JS = r"""
(function () {
  const data = window.VIEW_DATA, rows = data.rows, LIMIT = 500;
  const $ = (id) => document.getElementById(id);
  const state = {reason: "", bucket: "", qa: "", score: "", min: "", max: "", text: "", pages: "", sort: "", desc: ""};
  let shown = LIMIT;
  const uniq = (xs) => Array.from(new Set(xs)).sort();
  function fill(id, values, label) {
    const sel = $(id);
    [["", label]].concat(values.map((v) => [v, v])).forEach(([v, t]) => {
      const o = document.createElement("option"); o.value = v; o.textContent = t; sel.appendChild(o);
    });
  }
  fill("f-reason", ["accepted"].concat(uniq(rows.filter((r) => r.st === "reject").map((r) => r.r))), "all");
  fill("f-bucket", uniq(rows.filter((r) => r.st === "ok").map((r) => r.b)), "all");
  fill("f-qa", uniq([].concat(...rows.map((r) => Object.keys(r.q || {})))), "any");
  fill("f-score", uniq([].concat(...rows.map((r) => Object.keys(r.sc || {})))), "none");
  $("run").textContent = data.about.run_dir;
  $("about").textContent = data.about.rows + " rows, pages for a sample of " + data.about.sampled +
    (data.about.filter ? " (site built with --filter " + data.about.filter + ")" : "");

  function matches(r) {
    if (state.reason === "accepted" && r.st !== "ok") return false;
    if (state.reason && state.reason !== "accepted" && r.r !== state.reason) return false;
    if (state.bucket && r.b !== state.bucket) return false;
    if (state.qa && !(r.q && r.q[state.qa] > 0)) return false;
    if (state.score) {
      const v = r.sc && r.sc[state.score];
      if (v === undefined) return false;
      if (state.min !== "" && v < Number(state.min)) return false;
      if (state.max !== "" && v > Number(state.max)) return false;
    }
    if (state.pages && !r.p) return false;
    const t = state.text.toLowerCase();
    return !t || (r.k + " " + (r.src || "") + " " + (r.r || "")).toLowerCase().includes(t);
  }
  function sortKey(r) {
    if (state.sort === "sc") return state.score && r.sc ? r.sc[state.score] : undefined;
    if (state.sort === "st") return r.st === "ok" ? "" : r.r;
    return r[state.sort];
  }
  function cell(tr, content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.appendChild(content); else td.textContent = content == null ? "" : content;
    tr.appendChild(td); return td;
  }
  function render() {
    let list = rows.filter(matches);
    if (state.sort) {
      const dir = state.desc ? -1 : 1;
      list.sort((a, b) => {
        const x = sortKey(a), y = sortKey(b);
        if (x === y) return 0; if (x === undefined) return 1; if (y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    $("count").textContent = list.length + " of " + rows.length + " shown";
    const body = document.querySelector("#samples tbody");
    body.textContent = "";
    list.slice(0, shown).forEach((r) => {
      const tr = document.createElement("tr"); tr.className = r.st === "ok" ? "ok" : "reject"; tr.dataset.key = r.k;
      let thumb = "";
      if (r.t) { thumb = document.createElement("img"); thumb.src = r.t; thumb.alt = ""; thumb.loading = "lazy"; }
      cell(tr, thumb);
      let key = r.k;
      if (r.p) { key = document.createElement("a"); key.href = r.p; key.textContent = r.k; }
      cell(tr, key);
      cell(tr, r.st === "ok" ? "ok" : "rejected: " + r.r + " (" + (r.sg || "?") + ")");
      cell(tr, r.d == null ? "" : r.d.toFixed(1) + "s (" + r.b + ")");
      cell(tr, r.nq == null ? "" : String(r.nq)).title = Object.keys(r.q || {}).join(" ");
      cell(tr, Object.entries(r.sc || {}).map(([k, v]) => k + " " + +Number(v).toPrecision(3)).join(", ")).className = "sc";
      cell(tr, r.src || "");
      body.appendChild(tr);
    });
    $("more").hidden = list.length <= shown;
  }
  function save() {
    const p = new URLSearchParams();
    Object.entries(state).forEach(([k, v]) => { if (v) p.set(k, v); });
    history.replaceState(null, "", "#" + p.toString());
  }
  function load() {
    const p = new URLSearchParams(location.hash.slice(1));
    Object.keys(state).forEach((k) => { state[k] = p.get(k) || ""; });
    const ids = {reason: "f-reason", bucket: "f-bucket", qa: "f-qa", score: "f-score", min: "f-min", max: "f-max", text: "f-text"};
    Object.entries(ids).forEach(([k, id]) => { $(id).value = state[k]; });
    $("f-pages").checked = !!state.pages;
  }
  [["f-reason", "reason"], ["f-bucket", "bucket"], ["f-qa", "qa"], ["f-score", "score"], ["f-min", "min"],
   ["f-max", "max"], ["f-text", "text"]].forEach(([id, k]) => {
    const update = () => { state[k] = $(id).value; shown = LIMIT; save(); render(); };
    $(id).addEventListener("input", update); $(id).addEventListener("change", update);
  });
  $("f-pages").addEventListener("change", () => { state.pages = $("f-pages").checked ? "1" : ""; save(); render(); });
  document.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    state.desc = state.sort === th.dataset.sort && !state.desc ? "1" : "";
    state.sort = th.dataset.sort; save(); render();
  }));
  $("more").addEventListener("click", () => { shown += LIMIT; render(); });
  window.addEventListener("hashchange", () => { load(); render(); });
  load(); render();
})();
"""

SAMPLE_JS = r"""
(function () {
  const frames = Array.from(document.querySelectorAll("#strip .frame"));
  function mark(qa) {
    document.querySelectorAll(".qa.active").forEach((q) => q.classList.remove("active"));
    frames.forEach((f) => f.classList.remove("hl"));
    qa.classList.add("active");
    const picked = (qa.dataset.frames || "").split(" ").filter((x) => x !== "");
    picked.forEach((i) => frames[Number(i)] && frames[Number(i)].classList.add("hl"));
    if (picked.length) frames[Number(picked[0])].scrollIntoView({block: "nearest", inline: "center"});
  }
  document.querySelectorAll(".qa[data-start]").forEach((qa) => qa.addEventListener("click", () => mark(qa)));
  const first = document.querySelector(".qa[data-frames]:not([data-frames=''])");
  if (first) mark(first);
})();
"""
