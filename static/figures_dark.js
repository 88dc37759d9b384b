() => {
  // Dark mode (the page's `dark` class: the system's dark theme, or ?__theme=dark): every Plotly
  // figure is drawn on the page's dark background with light text and grid lines, once per new
  // figure (the server draws them light; one relayout each, in dark mode only).
  const DARK = {
    paper_bgcolor: "#0b0f19",
    plot_bgcolor: "#111827",
    "font.color": "#e5e7eb",
    "title.font.color": "#f3f4f6",
    "xaxis.gridcolor": "#374151",
    "yaxis.gridcolor": "#374151",
    "xaxis.linecolor": "#4b5563",
    "yaxis.linecolor": "#4b5563",
    "modebar.bgcolor": "rgba(17,24,39,0.7)",
    "modebar.color": "#9ca3af",
  };
  const dark = () => document.body.classList.contains("dark") ||
    !!document.querySelector(".gradio-container.dark, .dark .gradio-container");
  const darken = (gd) => {
    if (!window.Plotly || !gd.layout || !dark() || gd.layout.paper_bgcolor === DARK.paper_bgcolor) return;
    window.Plotly.relayout(gd, DARK);
  };
  const hook = (gd) => {
    if (gd.explorerDarkHook || !gd.on) return;
    gd.explorerDarkHook = true;
    gd.on("plotly_afterplot", () => darken(gd));
    darken(gd);
  };
  let queued = false;
  new MutationObserver(() => {
    if (queued || !dark()) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      document.querySelectorAll(".js-plotly-plot").forEach(hook);
    });
  }).observe(document.body, {childList: true, subtree: true});
}
