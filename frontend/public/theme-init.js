// Apply the saved theme before first paint (no flash). A file, not an inline script,
// so the server's Content-Security-Policy can forbid inline scripts altogether.
try {
  var t = localStorage.getItem('crucible.theme');
  if (t === 'light' || t === 'dark') document.documentElement.dataset.theme = t;
} catch (e) {}
