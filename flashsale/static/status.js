// The status page: reads every page of GET /items each second and updates the sales in place.
// Units sold per second come from this page's own samples of `sold` over the last minute.
"use strict";

const REFRESH_MS = 1000;
const RATE_WINDOW_MS = 60000;
const MAX_PAGES = 100; // GET /items pages read per refresh, at most

const samples = new Map(); // item id -> [{at, sold}], oldest first, the last minute's

async function fetchItems() {
  const items = [];
  let url = "/items?limit=1000";
  for (let page = 0; url && page < MAX_PAGES; page++) {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error(`GET /items answered ${response.status}`);
    const body = await response.json();
    items.push(...body.items);
    url = body.next;
  }
  return items;
}

function unitsPerSecond(item, at) {
  const kept = (samples.get(item.id) || []).filter((sample) => at - sample.at <= RATE_WINDOW_MS);
  kept.push({ at, sold: item.sold });
  samples.set(item.id, kept);
  const first = kept[0];
  return at > first.at ? ((item.sold - first.sold) * 1000) / (at - first.at) : null;
}

function when(iso, otherwise) {
  return iso ? new Date(iso).toLocaleString() : otherwise;
}

// Minor units as the server writes them (flashsale/payments.py display): "12.50 EUR". The
// currency's decimals come from the browser's CLDR data, as the server's from Babel's.
function money(minor, currency) {
  const digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
    .maximumFractionDigits;
  return `${(minor / 10 ** digits).toFixed(digits)} ${currency}`;
}

function fill(card, item, rate) {
  const percent = item.stock ? (100 * item.remaining) / item.stock : 0;
  card.dataset.id = item.id;
  card.dataset.state = item.state;
  card.querySelector(".name").textContent = item.name;
  card.querySelector(".state").textContent = item.state.replace("_", " ");
  card.querySelector(".fill").style.width = `${percent.toFixed(1)}%`;
  const bar = card.querySelector(".bar");
  bar.setAttribute("aria-valuemax", item.stock);
  bar.setAttribute("aria-valuenow", item.remaining);
  card.querySelector(".remaining").textContent = item.remaining;
  card.querySelector(".stock").textContent = item.stock;
  card.querySelector(".sold").textContent = item.sold;
  card.querySelector(".held").textContent = item.held;
  card.querySelector(".holding").hidden = !item.hold_seconds;
  card.querySelector(".money").hidden = !item.currency || item.revenue === undefined;  // operators only
  card.querySelector(".revenue").textContent = item.currency ? money(item.revenue, item.currency) : "";
  card.querySelector(".owed").textContent = item.refunds_owed;
  card.querySelector(".refunds").hidden = !item.refunds_owed;
  card.querySelector(".rate").textContent = rate === null ? "–" : rate.toFixed(1);
  card.querySelector(".window").textContent =
    `${when(item.sale_starts_at, "now")} → ${when(item.sale_ends_at, "until sold out")}`;
}

function render(items) {
  const at = Date.now();
  const list = document.getElementById("sales");
  const template = document.getElementById("sale-template");
  const cards = new Map([...list.querySelectorAll(".sale")].map((card) => [card.dataset.id, card]));
  const current = items.filter((item) => item.state !== "ended");
  let total = 0;
  for (const item of items) {
    const rate = unitsPerSecond(item, at);
    total += rate || 0;
    if (item.state === "ended") continue;
    let card = cards.get(String(item.id));
    if (!card) card = template.content.firstElementChild.cloneNode(true);
    cards.delete(String(item.id));
    fill(card, item, rate);
    list.appendChild(card); // in id order: appending an existing card moves it to the end
  }
  for (const gone of cards.values()) gone.remove();
  const ended = items.length - current.length;
  document.getElementById("summary").textContent =
    `${current.length} current sale${current.length === 1 ? "" : "s"} · ${total.toFixed(1)} units/s in all`;
  document.getElementById("ended").textContent = ended ? `${ended} ended sale(s) not shown.` : "";
  document.getElementById("updated").textContent = `Updated ${new Date(at).toLocaleTimeString()}`;
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    render(await fetchItems());
    error.hidden = true;
  } catch (failure) {
    error.textContent = `Could not refresh: ${failure.message}. Retrying.`;
    error.hidden = false;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
