// Live updates without a library: poll /app/live, show the counts of orders awaiting approval and open alerts in the
// navigation, and on the pages that list them (and the overview, also for new forecasts) redraw the page's main
// content when they change.
(() => {
  "use strict";
  const body = document.body;
  if (!body.dataset.liveSeconds) return; // not signed in
  const page = body.dataset.live;
  const seconds = Math.max(Number(body.dataset.liveSeconds) || 10, 1);
  let drawn = null; // what the page's content shows; a change not drawn yet is tried again at the next poll
  let pointerMoved = 0;
  document.addEventListener("pointermove", () => { pointerMoved = Date.now(); }, { passive: true });

  function show(id, count, label) {
    const badge = document.getElementById(id);
    if (!badge) return;
    badge.textContent = count ? String(count) : "";
    badge.setAttribute("aria-label", count ? `${count} ${label}` : "");
  }

  // Whether the content was redrawn. Never under someone's fingers: not while anything in it has the focus, nor
  // while the pointer is moving over the page (a row moving down under a click would approve another order).
  async function redraw() {
    const main = document.querySelector("main");
    if (main.contains(document.activeElement) || Date.now() - pointerMoved < 1500) return false;
    if (main.querySelector("details[open]")) return false; // a panel someone opened (choosing a product) stays

    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok || response.redirected) return false;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
    if (!fresh) return false;
    main.replaceChildren(...fresh.childNodes);
    return true;
  }

  async function poll() {
    try {
      const response = await fetch("/app/live", { credentials: "same-origin" });
      if (response.redirected) return; // signed out meanwhile: stop
      if (response.ok) {
        const now = await response.json();
        show("waiting-count", now.waiting_orders.length, "awaiting approval");
        show("alert-count", now.open_alerts.length, "open alerts");
        // Only the supplies page shows forecasts: the others redraw for orders and alerts alone.
        const key = JSON.stringify(page === "overview" ? now : { ...now, forecasts_at: null });
        if (drawn === null && page === "overview") {
          // The forecasts the page was drawn with: one stored since, before this first poll, is drawn now.
          const shown = document.getElementById("live-forecasts-at");
          drawn = JSON.stringify({ ...now, forecasts_at: shown ? shown.dataset.at || null : now.forecasts_at });
        }
        if (drawn === null || !page) drawn = key;
        else if (key !== drawn && (await redraw())) drawn = key;
      }
    } catch (error) {
      // offline for a moment: try again at the next tick
    }
    setTimeout(poll, seconds * 1000);
  }
  poll();
})();
