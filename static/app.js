() => {
  // Tap or click a token to pin its tooltip (step, probability, top-3), for touch screens
  // where hover does not exist; click again or elsewhere to unpin.
  document.addEventListener("click", (event) => {
    const token = event.target.closest(".tok[data-tip]");
    document.querySelectorAll(".tok.pinned").forEach((el) => { if (el !== token) el.classList.remove("pinned"); });
    if (token) token.classList.toggle("pinned");
  });
  // A tooltip is up to 28em of 12 px text wide: near the right edge it opens to the left.
  document.addEventListener("mouseover", (event) => {
    const token = event.target.closest(".tok[data-tip]");
    if (token) token.classList.toggle("tip-left", window.innerWidth - token.getBoundingClientRect().left < 28 * 12 + 24);
  });
  // Phones: the results sit below the whole form, so after Run (or Re-run) the page scrolls to them.
  document.addEventListener("click", (event) => {
    if (window.innerWidth > 768 || !event.target.closest("#run-btn, #rerun-btn")) return;
    // Scrolled twice: the page above the results can still change height as the run starts.
    const toResults = () => {
      const status = document.querySelector("#status");
      if (status) window.scrollTo({top: status.getBoundingClientRect().top + window.scrollY - 12});
    };
    setTimeout(toResults, 150);
    setTimeout(toResults, 900);
  });
}
