// Runs in <head> before the page paints: applies the saved theme (else the system's).
(function () {
  var saved = null;
  try { saved = localStorage.getItem("lrprobe-theme"); } catch (e) { /* storage blocked */ }
  if (saved === "dark" || saved === "light") {
    document.documentElement.setAttribute("data-theme", saved);
  }
})();
