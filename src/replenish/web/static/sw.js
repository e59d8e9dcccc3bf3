// The web app's service worker: shows Web Push notifications (title, body, the one-tap answers as actions) and
// opens what a tap chose: an answer's confirmation page, or the order in the app. Nothing is cached.
"use strict";

self.addEventListener("push", (event) => {
  const data = event.data ? event.data.json() : { title: "Replenish", body: "" };
  const actions = (data.actions || []).slice(0, 2).map((item) => ({ action: item.action, title: item.title }));
  event.waitUntil(
    self.registration.showNotification(data.title, { body: data.body, tag: data.tag || undefined, data, actions }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const chosen = (data.actions || []).find((item) => item.action === event.action);
  event.waitUntil(self.clients.openWindow(chosen ? chosen.url : data.url || "/app"));
});
