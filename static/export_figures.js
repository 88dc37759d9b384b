() => {
  // "Download figures": every figure of the Decode tab drawn by Plotly in the browser (SVG, or PNG
  // at twice the size shown) and zipped (fflate, static/vendor/) into one file, named after the run
  // and the step shown. Nothing goes through the server.
  const FIGURES = ["heatmap", "changes", "order", "bars", "violation-heatmap", "energy-heatmap", "pairwise-s",
    "pairwise-a", "candidates"];
  // The figure as shown: the page draws the step marker over the plot (static/components/
  // player.js), so the copy drawn here gets Plotly's own marker back, at the step shown.
  const asShown = (gd, step) => {
    const marked = (item) => (item.name === "selected step" && step !== null
      ? {...item, visible: true, ...("x0" in item ? {x0: step, x1: step} : {x: step, text: `step ${step}`})}
      : item);
    const layout = {...gd.layout, shapes: (gd.layout.shapes || []).map(marked),
      annotations: (gd.layout.annotations || []).map(marked)};
    return {data: gd.data, layout, config: {}};
  };
  const bytesOf = async (gd, format, step) => {
    const figure = asShown(gd, step);
    const size = {width: gd._fullLayout ? gd._fullLayout.width : 700, height: gd._fullLayout ? gd._fullLayout.height : 400};
    const url = await window.Plotly.toImage(figure, {format, scale: format === "png" ? 2 : 1, ...size});
    if (format === "svg") return window.fflate.strToU8(decodeURIComponent(url.slice(url.indexOf(",") + 1)));
    const binary = atob(url.slice(url.indexOf(",") + 1));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  };
  const download = async (format, button) => {
    const player = document.querySelector("#tokens");
    const state = player && player.explorerPlayer;
    const run = state && state.run != null ? `run-${state.run}` : "run";
    const shown = player && player.dataset.step !== undefined && player.dataset.step !== "-1" ? Number(player.dataset.step) : null;
    const step = shown === null ? "" : `-step-${shown}`;
    const files = {};
    for (const id of FIGURES) {
      const gd = document.querySelector(`#${id} .js-plotly-plot`);
      if (gd && gd.data) files[`${run}${step}-${id}.${format}`] = await bytesOf(gd, format, shown);
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
