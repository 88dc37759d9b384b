() => {
  // "Download figures": every figure of the Decode tab drawn by Plotly in the browser (SVG, or PNG
  // at twice the size shown) and zipped (fflate, static/vendor/) into one file, named after the run
  // and the step shown. Nothing goes through the server.
  const FIGURES = ["heatmap", "changes", "order", "bars", "violation-heatmap", "energy-heatmap", "pairwise-s",
    "pairwise-a", "candidates"];
  const bytesOf = async (gd, format) => {
    const url = await window.Plotly.toImage(gd, {format, scale: format === "png" ? 2 : 1});
    if (format === "svg") return window.fflate.strToU8(decodeURIComponent(url.slice(url.indexOf(",") + 1)));
    const binary = atob(url.slice(url.indexOf(",") + 1));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  };
  const download = async (format, button) => {
    const player = document.querySelector("#tokens");
    const state = player && player.explorerPlayer;
    const run = state && state.run != null ? `run-${state.run}` : "run";
    const step = player && player.dataset.step !== undefined ? `-step-${player.dataset.step}` : "";
    const files = {};
    for (const id of FIGURES) {
      const gd = document.querySelector(`#${id} .js-plotly-plot`);
      if (gd && gd.data) files[`${run}${step}-${id}.${format}`] = await bytesOf(gd, format);
    }
    if (!Object.keys(files).length) { button.textContent = "No figure to download yet"; return; }
    const blob = new Blob([window.fflate.zipSync(files, {level: format === "svg" ? 6 : 0})], {type: "application/zip"});
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${run}${step}-figures-${format}.zip`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  };
  document.addEventListener("click", (event) => {
    const button = event.target.closest("#download-svg, #download-png");
    if (!button || !window.Plotly || !window.fflate) return;
    const label = button.textContent;
    button.textContent = "Drawing…";
    download(button.id === "download-svg" ? "svg" : "png", button)
      .catch((error) => { button.textContent = `Failed: ${error}`; })
      .finally(() => setTimeout(() => { button.textContent = label; }, 1500));
  });
}
