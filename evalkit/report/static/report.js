/* evalkit report: sortable tables, image/heatmap toggle, lightbox, blind test. Vanilla JS, no network.
   Data strings reach the DOM only through textContent or attributes, never innerHTML. */
(function () {
  "use strict";
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };

  /* ---- sortable tables: click a header; numbers sort as numbers, blanks last ---- */
  $$("table.sortable").forEach(function (table) {
    var head = table.tHead; if (!head) return;
    var row = head.rows[head.rows.length - 1];
    // Map each clickable header to its column index in the body (grouped headers span two rows).
    var cols = [];
    if (head.rows.length > 1) {
      var top = head.rows[0], sub = head.rows[1], col = 0, subIdx = 0;
      Array.prototype.forEach.call(top.cells, function (th) {
        var span = th.colSpan || 1;
        if (th.rowSpan > 1) { cols.push([th, col]); col += 1; }
        else { for (var k = 0; k < span; k++) { cols.push([sub.cells[subIdx++], col++]); } }
      });
    } else {
      Array.prototype.forEach.call(row.cells, function (th, i) { cols.push([th, i]); });
    }
    cols.forEach(function (pair) {
      var th = pair[0], idx = pair[1];
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        $$("th[aria-sort]", head).forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return r.cells.length > idx; });
        var rest = Array.prototype.slice.call(body.rows).filter(function (r) { return r.cells.length <= idx; });
        var key = function (r) {
          var c = r.cells[idx]; var s = c.hasAttribute("data-sort") ? c.getAttribute("data-sort") : c.textContent.trim();
          var n = parseFloat(s); return { n: isNaN(n) ? null : n, s: s };
        };
        rows.sort(function (a, b) {
          var ka = key(a), kb = key(b);
          if (ka.s === "" && kb.s !== "") return 1;
          if (kb.s === "" && ka.s !== "") return -1;
          var d = (ka.n !== null && kb.n !== null) ? ka.n - kb.n : ka.s.localeCompare(kb.s);
          return asc ? d : -d;
        });
        rows.concat(rest).forEach(function (r) { body.appendChild(r); });
      });
    });
  });

  /* ---- small images (tiny-model runs) upscale with hard pixels: smoothing would hide the differences we look for ---- */
  function markUpscaled(img) {
    var fit = function () { img.classList.toggle("upscaled", img.naturalWidth > 0 && img.naturalWidth < img.clientWidth); };
    img.addEventListener("load", fit); if (img.complete) fit();
  }
  $$("#lb-img, #blind-img-a, #blind-img-b, .tile img").forEach(markUpscaled);

  /* ---- nav: highlight the section in view ---- */
  var links = $$(".tabs a");
  if ("IntersectionObserver" in window && links.length) {
    var obs = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (!e.isIntersecting) return;
        links.forEach(function (a) { a.classList.toggle("active", a.getAttribute("href") === "#" + e.target.id); });
      });
    }, { rootMargin: "-45% 0px -50% 0px" });
    $$("main > section").forEach(function (s) { obs.observe(s); });
  }

  /* ---- images vs |Δ| heatmaps ---- */
  $$(".toolbar [data-view]").forEach(function (btn) {
    btn.addEventListener("click", function () {
      $$(".toolbar [data-view]").forEach(function (b) { b.classList.toggle("on", b === btn); });
      document.body.classList.toggle("view-diff", btn.getAttribute("data-view") === "diff");
    });
  });

  /* ---- per-prompt metric switch ---- */
  $$("#pp-switch [data-pp]").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var key = btn.getAttribute("data-pp");
      $$("#pp-switch [data-pp]").forEach(function (b) { b.classList.toggle("on", b === btn); });
      $$("div.pp[data-pp]").forEach(function (d) { d.hidden = d.getAttribute("data-pp") !== key; });
    });
  });

  /* ---- lightbox: full-resolution PNG, flip to the reference while Space/R is held ---- */
  var thumbs = $$("a.thumb"), lb = $("#lightbox"), lbImg = $("#lb-img"), current = -1, showingRef = false;
  function lbShow(i) {
    current = (i + thumbs.length) % thumbs.length;
    var a = thumbs[current];
    showingRef = false;
    lbImg.src = a.getAttribute("data-full");
    lbImg.alt = a.getAttribute("data-title");
    $("#lb-title").textContent = a.getAttribute("data-title");
    $("#lb-open").href = a.getAttribute("data-full");
    var mode = $("#lb-mode"); mode.textContent = a.getAttribute("data-backend"); mode.classList.remove("refmode");
    lb.hidden = false;
  }
  function lbRef(on) {
    if (current < 0) return;
    var a = thumbs[current], ref = a.getAttribute("data-ref");
    if (!ref) return;
    showingRef = on;
    lbImg.src = on ? ref : a.getAttribute("data-full");
    var mode = $("#lb-mode");
    mode.textContent = on ? "reference" : a.getAttribute("data-backend");
    mode.classList.toggle("refmode", on);
  }
  function lbClose() { lb.hidden = true; current = -1; lbImg.removeAttribute("src"); }
  thumbs.forEach(function (a, i) {
    a.addEventListener("click", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return; // let "open in new tab" work
      ev.preventDefault(); lbShow(i);
    });
  });
  if (lb) {
    $("#lb-close").addEventListener("click", lbClose);
    lb.addEventListener("click", function (ev) { if (ev.target === lb || ev.target.classList.contains("lb-stage")) lbClose(); });
  }
  document.addEventListener("keydown", function (ev) {
    if (!lb || lb.hidden) return;
    if (ev.key === "Escape") lbClose();
    else if (ev.key === "ArrowRight") lbShow(current + 1);
    else if (ev.key === "ArrowLeft") lbShow(current - 1);
    else if ((ev.key === " " || ev.key === "r" || ev.key === "R") && !ev.repeat) { ev.preventDefault(); lbRef(!(ev.key !== " " && showingRef)); }
    else return;
    ev.preventDefault();
  });
  document.addEventListener("keyup", function (ev) { if (lb && !lb.hidden && ev.key === " ") lbRef(false); });

  /* ---- blind test ---- */
  var dataEl = $("#blind-data");
  if (!dataEl || !$("#blind-app")) return;
  var blind = JSON.parse(dataEl.textContent);
  var rounds = [], pos = 0, answers = [];

  function mulberry32(a) { // small seeded PRNG: a seed reproduces the same order and sides
    return function () {
      a |= 0; a = (a + 0x6D2B79F5) | 0;
      var t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  var m = /blind-seed=(\d+)/.exec(location.hash);
  $("#blind-seed").value = m ? m[1] : String(Math.floor(Math.random() * 1e9));

  function show(id) { ["blind-intro", "blind-play", "blind-result"].forEach(function (k) { $("#" + k).hidden = k !== id; }); }
  function start() {
    var seed = parseInt($("#blind-seed").value, 10) || 0, rng = mulberry32(seed);
    var all = blind.rounds.slice();
    for (var i = all.length - 1; i > 0; i--) { var j = Math.floor(rng() * (i + 1)); var t = all[i]; all[i] = all[j]; all[j] = t; }
    var n = $("#blind-n").value === "all" ? all.length : Math.min(all.length, parseInt($("#blind-n").value, 10));
    rounds = all.slice(0, n).map(function (r) { return { r: r, qside: rng() < 0.5 ? 0 : 1 }; });
    pos = 0; answers = [];
    $("#blind-last").textContent = ""; $("#blind-last").className = "";
    show("blind-play"); render();
    $("#blind-app").scrollIntoView({ block: "start" });
  }
  function render() {
    var cur = rounds[pos], r = cur.r;
    $("#blind-progress").textContent = "Round " + (pos + 1) + " of " + rounds.length;
    $("#blind-prompt").textContent = r.prompt;
    $("#blind-img-a").src = cur.qside === 0 ? r.test : r.ref;
    $("#blind-img-b").src = cur.qside === 1 ? r.test : r.ref;
    var next = rounds[pos + 1];
    if (next) { new Image().src = next.r.test; new Image().src = next.r.ref; } // preload the next pair
  }
  function pick(side) {
    var cur = rounds[pos]; if (!cur) return;
    var right = side === cur.qside;
    answers.push({ backend: cur.r.backend, right: right });
    var last = $("#blind-last");
    if ($("#blind-feedback").checked) {
      last.textContent = (right ? "✓ Right" : "✗ Wrong") + " — that was " + cur.r.backend;
      last.className = right ? "right" : "wrong";
    } else { last.textContent = answers.length + " answered"; last.className = ""; }
    pos += 1;
    if (pos >= rounds.length) finish(); else render();
  }
  function wilson(k, n) {
    if (!n) return [0, 1];
    var z = 1.96, p = k / n, d = 1 + z * z / n, c = (p + z * z / (2 * n)) / d;
    var h = z * Math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d;
    return [Math.max(0, c - h), Math.min(1, c + h)];
  }
  function pct(x) { return (100 * x).toFixed(0) + "%"; }
  function finish() {
    var total = answers.length, right = answers.filter(function (a) { return a.right; }).length;
    var per = {}, order = [];
    answers.forEach(function (a) {
      if (!per[a.backend]) { per[a.backend] = { n: 0, k: 0 }; order.push(a.backend); }
      per[a.backend].n += 1; if (a.right) per[a.backend].k += 1;
    });
    order.sort(function (a, b) { return per[b].k / per[b].n - per[a].k / per[a].n || a.localeCompare(b); });
    var ci = wilson(right, total);
    $("#blind-score").textContent = total
      ? "You spotted the quantized image " + right + " of " + total + " times (" + pct(right / total) + "; 95% CI " + pct(ci[0]) + "–" + pct(ci[1]) + ")."
      : "No rounds answered.";
    var body = $("#blind-table tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    order.forEach(function (b) {
      var s = per[b], w = wilson(s.k, s.n);
      var verdict = w[0] > 0.5 ? "spotted" : (w[1] < 0.5 ? "picked the reference more often" : "not told apart");
      var tr = document.createElement("tr");
      [b, String(s.n), String(s.k), pct(s.k / s.n), pct(w[0]) + "–" + pct(w[1]), verdict].forEach(function (text, i) {
        var cell = document.createElement(i === 0 ? "th" : "td"); cell.textContent = text; tr.appendChild(cell);
      });
      body.appendChild(tr);
    });
    show("blind-result");
  }
  $("#blind-start").addEventListener("click", start);
  $("#blind-again").addEventListener("click", function () { $("#blind-seed").value = String(Math.floor(Math.random() * 1e9)); show("blind-intro"); });
  $("#blind-stop").addEventListener("click", finish);
  $("#blind-a").addEventListener("click", function () { pick(0); });
  $("#blind-b").addEventListener("click", function () { pick(1); });
  document.addEventListener("keydown", function (ev) {
    if ($("#blind-play").hidden || (lb && !lb.hidden)) return;
    if (ev.key === "1" || ev.key === "a" || ev.key === "A") pick(0);
    else if (ev.key === "2" || ev.key === "b" || ev.key === "B") pick(1);
  });
})();
