// Live updates without a library: poll /app/live, show the counts of orders awaiting approval and open alerts in the
// navigation, and on the pages that list them (and the overview) redraw the page's main content when they change.
(() => {
  "use strict";
  const body = document.body;
  if (!body.dataset.liveSeconds) return; // not signed in
  const page = body.dataset.live;
  const seconds = Math.max(Number(body.dataset.liveSeconds) || 10, 1);
  let last = null;

  function show(id, count, label) {
    const badge = document.getElementById(id);
    if (!badge) return;
    badge.textContent = count ? String(count) : "";
    badge.title = count ? `${count} ${label}` : "";
  }

  async function redraw() {
    const active = document.activeElement;
    if (active && active.closest("main form")) return; // never under someone's fingers
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
    if (fresh) document.querySelector("main").replaceChildren(...fresh.childNodes);
  }

  async function poll() {
    try {
      const response = await fetch("/app/live", { credentials: "same-origin" });
      if (response.redirected || !response.ok) return; // signed out meanwhile
      const now = await response.json();
      show("waiting-count", now.waiting_orders.length, "awaiting approval");
      show("alert-count", now.open_alerts.length, "open alerts");
      const key = JSON.stringify(now);
      if (last !== null && key !== last && page) await redraw();
      last = key;
    } catch (error) {
      // offline for a moment: try again at the next tick
    } finally {
      setTimeout(poll, seconds * 1000);
    }
  }
  poll();
})();
