// The consent page's Web Push toggle: subscribes this browser (service worker /app/sw.js) with the platform's
// VAPID key and tells the platform, or unsubscribes it. Without push support the section says so.
(() => {
  "use strict";
  const section = document.getElementById("push");
  if (!section) return;
  const button = section.querySelector("button");
  const status = section.querySelector(".push-status");
  const key = section.dataset.key;
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !key) {
    status.textContent = "This browser cannot receive notifications from the web app.";
    return;
  }
  let registration = null;

  function show(subscription) {
    button.hidden = false;
    button.textContent = subscription ? "Turn off notifications in this browser" : "Turn on notifications in this browser";
    button.setAttribute("aria-pressed", subscription ? "true" : "false");
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": section.dataset.csrf },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`the platform answered ${response.status}`);
  }

  navigator.serviceWorker
    .register("/app/sw.js", { scope: "/app/" })
    .then((found) => { registration = found; return found.pushManager.getSubscription(); })
    .then(show)
    .catch((error) => { status.textContent = `Notifications are not available here: ${error.message}`; });

  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      let subscription = await registration.pushManager.getSubscription();
      if (subscription) {
        await post("/app/push/unsubscribe", { endpoint: subscription.endpoint });
        await subscription.unsubscribe();
        show(null);
        status.textContent = "Turned off for this browser.";
      } else if ((await Notification.requestPermission()) !== "granted") {
        status.textContent = "Notifications are blocked for this site: allow them in the browser's settings.";
      } else {
        subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
        await post("/app/push/subscribe", subscription.toJSON());
        show(subscription);
        status.textContent = "Turned on: requests, orders and alerts now reach this browser too.";
      }
    } catch (error) {
      status.textContent = `It could not be changed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
})();
