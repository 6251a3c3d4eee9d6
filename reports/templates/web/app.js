/* Filtering and sorting only: every page reads the same without this script. Untrusted text
   is only ever read from the page or from JSON and written back with textContent. */
(function () {
  "use strict";
  var FILTERS = ["component", "version", "runner", "model", "stage", "state"];

  function params() {
    var q = location.search.length > 1 ? location.search.slice(1) : location.hash.slice(1);
    return new URLSearchParams(q.indexOf("=") >= 0 ? q : "");
  }

  function setUrl(p) {
    var q = p.toString();
    try {
      // an anchor (#main, a skip link's target) is not filter state: keep it
      var anchor = location.hash.indexOf("=") >= 0 ? "" : location.hash;
      history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + anchor);
    } catch (e) {
      location.hash = q;
    }
  }

  function combine(states, D) {
    // indexes into D.states: works caveats broken flaky untested uninstallable
    var sev = [1, 2, 4, 3, 0, 0], worst = -1, anyOther = false, anyUninst = false;
    for (var i = 0; i < states.length; i++) {
      var s = states[i];
      if (s === 5) anyUninst = true;
      if (sev[s] === 0) continue;
      if (worst < 0 || sev[s] > sev[worst]) worst = s;
    }
    if (worst < 0) return anyUninst ? 5 : 4;
    if (worst === 2) {
      for (var j = 0; j < states.length; j++) if (sev[states[j]] && states[j] !== 2) anyOther = true;
      if (anyOther) return 1;
    }
    return worst;
  }

  function matrix() {
    var el = document.getElementById("mx-data"), table = document.getElementById("mx");
    var form = document.getElementById("filters");
    if (!el || !table || !form) return;
    var D = JSON.parse(el.textContent);
    var ra = D.axes.indexOf(table.dataset.rows), ca = D.axes.indexOf(table.dataset.cols);
    var squares = {}, tds = table.querySelectorAll("td.sq");
    for (var i = 0; i < tds.length; i++) squares[tds[i].dataset.r + "," + tds[i].dataset.c] = tds[i];
    var rowsEl = table.querySelectorAll("tbody tr"), colsEl = table.querySelectorAll("[data-c]");
    form.hidden = false;

    function apply() {
      var t0 = performance.now();
      var f = {};
      FILTERS.forEach(function (k) { f[k] = form.elements[k].value; });
      var comp = f.component ? f.component.split("|") : null;
      var ver = f.version ? f.version.split("|") : null;
      var compAxis = comp ? D.axes.indexOf(comp[0]) : -1, verAxis = ver ? D.axes.indexOf(ver[0]) : -1;
      var runner = f.runner ? D.runners.indexOf(f.runner) : -1, model = f.model ? D.models.indexOf(f.model) : -1;
      var stage = f.stage ? D.stages.indexOf(f.stage) : -1, want = f.state ? D.states.indexOf(f.state) : -1;
      var groups = {}, rowHas = {}, colHas = {}, n = 0;
      for (var i = 0; i < D.cells.length; i++) {
        var c = D.cells[i];
        if (runner >= 0 && c[0] !== runner) continue;
        if (model >= 0 && c[1] !== model) continue;
        if (comp && D.values[comp[0]][c[2 + compAxis]].split("@")[0] !== comp[1]) continue;
        if (ver && D.values[ver[0]][c[2 + verAxis]] !== ver[1]) continue;
        var s = stage >= 0 ? +c[7].charAt(stage) : c[6];
        var key = c[2 + ra] + "," + c[2 + ca];
        (groups[key] = groups[key] || []).push(s);
        rowHas[c[2 + ra]] = true; colHas[c[2 + ca]] = true; n++;
      }
      var filtered = FILTERS.some(function (k) { return f[k]; }), shown = 0;
      // only what changed is written: a big table's layout is the cost, not this loop
      for (var k in squares) {
        var td = squares[k], g = groups[k], st = g ? combine(g, D) : 4, dim = want >= 0 && st !== want;
        if (td._st === undefined) td._st = D.states.indexOf(td.className.split(" ")[1]);
        if (td._st !== st) {
          td.classList.replace(D.states[td._st], D.states[st]);
          var sym = td.querySelector(".sym"), lab = td.querySelector(".lab");
          if (sym) sym.textContent = D.symbols[st];
          if (lab) lab.textContent = D.labels[st];
          td._st = st;
        }
        if (td.classList.contains("dim") !== dim) td.classList.toggle("dim", dim);
        if (!dim && g) shown++;
      }
      var restrict = f.component || f.version || f.runner || f.model;
      for (var r = 0; r < rowsEl.length; r++) {
        var hr = !!restrict && !rowHas[rowsEl[r].dataset.r];
        if (rowsEl[r].hidden !== hr) rowsEl[r].hidden = hr;
      }
      for (var q = 0; q < colsEl.length; q++) {
        var hc = !!restrict && !colHas[colsEl[q].dataset.c];
        if (colsEl[q].hidden !== hc) colsEl[q].hidden = hc;
      }
      document.getElementById("shown").textContent = filtered ? n + " cells match, " + shown + " squares shown" : "";
      var p = new URLSearchParams();
      if (form.elements.rows.value !== table.dataset.rows || form.elements.cols.value !== table.dataset.cols) {
        p.set("rows", form.elements.rows.value); p.set("cols", form.elements.cols.value);
      }
      FILTERS.forEach(function (k) { if (f[k]) p.set(k, f[k]); });
      setUrl(p);
      document.body.dataset.filterMs = (performance.now() - t0).toFixed(2);
    }

    function goPair() {
      var a = form.elements.rows.value, b = form.elements.cols.value;
      if (a === b) return;
      var p = new URLSearchParams();
      FILTERS.forEach(function (k) { if (form.elements[k].value) p.set(k, form.elements[k].value); });
      var page = table.dataset.default === a + "-" + b ? "index.html" : "matrix-" + a + "-" + b + ".html";
      location.href = page + (p.toString() ? "?" + p.toString() : "");
    }

    var p = params();
    FILTERS.forEach(function (k) {
      var v = p.get(k), sel = form.elements[k];
      if (v && Array.prototype.some.call(sel.options, function (o) { return o.value === v; })) sel.value = v;
    });
    form.addEventListener("change", function (ev) {
      if (ev.target.name === "rows" || ev.target.name === "cols") goPair(); else apply();
    });
    form.addEventListener("reset", function () { setTimeout(apply, 0); });
    apply();
  }

  function sortable() {
    var tables = document.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table) {
      var ths = table.querySelectorAll("thead th");
      Array.prototype.forEach.call(ths, function (th, col) {
        var b = document.createElement("button");
        b.className = "sort"; b.type = "button"; b.textContent = th.textContent;
        b.setAttribute("aria-label", "sort by " + th.textContent);
        th.textContent = ""; th.appendChild(b);
        b.addEventListener("click", function () {
          var asc = th.getAttribute("aria-sort") !== "ascending";
          Array.prototype.forEach.call(ths, function (h) { h.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", asc ? "ascending" : "descending");
          var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
          rows.sort(function (x, y) {
            var a = x.cells[col] ? x.cells[col].textContent.trim() : "", c = y.cells[col] ? y.cells[col].textContent.trim() : "";
            var na = parseFloat(a), nc = parseFloat(c);
            var r = (!isNaN(na) && !isNaN(nc)) ? na - nc : a.localeCompare(c, undefined, {numeric: true});
            return asc ? r : -r;
          });
          rows.forEach(function (r) { body.appendChild(r); });
        });
      });
    });
  }

  matrix();
  sortable();
})();
