// The dashboard's little bit of behaviour: theme toggle, copy button, data shortcuts and live
// progress (polling the dashboard's own progress endpoint; the page works without it).
(function () {
  "use strict";
  var root = document.documentElement;

  function currentTheme() {
    var set = root.getAttribute("data-theme");
    if (set) return set;
    return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  var toggle = document.getElementById("theme-toggle");
  if (toggle) {
    toggle.setAttribute("aria-pressed", String(currentTheme() === "dark"));
    toggle.addEventListener("click", function () {
      var next = currentTheme() === "dark" ? "light" : "dark";
      root.setAttribute("data-theme", next);
      toggle.setAttribute("aria-pressed", String(next === "dark"));
      try { localStorage.setItem("lrprobe-theme", next); } catch (e) { /* ignore */ }
    });
  }

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = document.getElementById(button.getAttribute("data-copy")).innerText;
      var done = function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard) {
        navigator.clipboard.writeText(text).then(done, function () { button.textContent = "Select and copy"; });
      }
    });
  });

  document.querySelectorAll("[data-fill]").forEach(function (button) {
    button.addEventListener("click", function () {
      var input = document.getElementById(button.getAttribute("data-fill"));
      input.value = button.getAttribute("data-value");
      input.focus();
    });
  });

  function update(el, info) {
    var chip = el.querySelector("[data-chip]");
    if (chip) {
      chip.textContent = info.status + (info.cancel_requested && info.status === "running" ? " · cancelling" : "");
      chip.className = "chip chip-" + info.status;
    }
    var wrap = el.querySelector("[data-progress]");
    if (wrap) {
      var bar = wrap.querySelector("progress");
      var text = wrap.querySelector("[data-progress-text]");
      wrap.hidden = info.final;
      if (info.total) {
        bar.max = info.total;
        bar.value = info.done;
        text.textContent = info.done + "/" + info.total + (info.phase ? " · " + info.phase : "");
      }
    }
    el.setAttribute("data-status", info.status);
  }

  function poll(elements, onFinal) {
    var pending = elements.filter(function (el) {
      var s = el.getAttribute("data-status");
      return s === "queued" || s === "running";
    });
    if (!pending.length) return;
    var ids = pending.map(function (el) { return el.getAttribute("data-job-id"); });
    fetch("/ui/jobs/progress?ids=" + encodeURIComponent(ids.join(",")), {
      headers: { Accept: "application/json" }, credentials: "same-origin"
    }).then(function (response) {
      if (!response.ok || response.headers.get("content-type").indexOf("json") < 0) throw new Error("signed out");
      return response.json();
    }).then(function (data) {
      pending.forEach(function (el) {
        var info = data[el.getAttribute("data-job-id")];
        if (!info) return;
        update(el, info);
        if (info.final && onFinal) onFinal(el, info);
      });
      setTimeout(function () { poll(elements, onFinal); }, 1500);
    }).catch(function () {
      setTimeout(function () { poll(elements, onFinal); }, 5000);
    });
  }

  var job = document.querySelector("[data-poll-job]");
  if (job) {
    poll([job], function () { window.location.reload(); });
  }
  var list = document.querySelector("[data-poll-list]");
  if (list) {
    poll(Array.prototype.slice.call(list.querySelectorAll("tr[data-job-id]")), null);
  }
})();
