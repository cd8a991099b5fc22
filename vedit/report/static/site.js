// vedit report: sortable, filterable leaderboard and a video grid played in sync. No dependencies.
"use strict";

function sortBy(table, th) {
  const index = Array.prototype.indexOf.call(th.parentNode.children, th);
  const numeric = th.dataset.type === "number";
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const key = (row) => row.children[index].dataset.v;
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    let x = key(a), y = key(b);
    if (numeric) {
      x = x === "" ? NaN : Number(x); y = y === "" ? NaN : Number(y);
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);  // missing values last
      return ascending ? x - y : y - x;
    }
    return ascending ? x.localeCompare(y) : y.localeCompare(x);
  });
  rows.forEach((row) => body.appendChild(row));
}

function updateBoard(table) {
  const preset = document.getElementById("preset");
  const wanted = preset && preset.value ? preset.value.split(" ") : null;
  const copies = document.getElementById("copies");
  const heads = Array.from(table.tHead.rows[0].children);
  const hide = heads.map((th) => {
    const kind = th.dataset.kind;
    if (kind !== "metric" && kind !== "copy") return false;
    if (kind === "copy" && !(copies && copies.checked)) return true;
    return wanted !== null && !wanted.includes(th.dataset.metric);
  });
  heads.forEach((th, i) => th.classList.toggle("hidden", hide[i]));
  const filters = Array.from(document.querySelectorAll("select.filter"));
  Array.from(table.tBodies[0].rows).forEach((row) => {
    Array.from(row.children).forEach((td, i) => td.classList.toggle("hidden", hide[i]));
    const shown = filters.every((f) => f.value === row.dataset[f.dataset.filter] ||
                                      (f.value === "" && (f.dataset.filter !== "category" || row.dataset.category === "")));
    row.classList.toggle("hidden", !shown);
  });
}

function initBoard(table) {
  table.tHead.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => sortBy(table, th)));
  document.querySelectorAll("#controls select, #controls input").forEach((el) =>
    el.addEventListener("change", () => updateBoard(table)));
  updateBoard(table);
}

function initPlayer(bar) {
  const videos = Array.from(document.querySelectorAll("video"));
  const play = bar.querySelector("[data-play]");
  const seek = bar.querySelector("[data-seek]");
  const time = bar.querySelector("[data-time]");
  const loop = bar.querySelector("[data-loop]");
  const curves = Array.from(document.querySelectorAll(".curves"));
  if (!videos.length) { bar.classList.add("hidden"); return; }
  const duration = () => Math.max(0, ...videos.map((v) => (isFinite(v.duration) ? v.duration : 0)));
  // Seeks made here are remembered per video (v.syncTarget), so that their late `seeked` events are
  // told apart from a seek of one video by the user, which the others then follow.
  const seekAll = (t, except, tolerance = 0.04) => videos.forEach((v) => {
    if (v === except || Math.abs(v.currentTime - t) <= tolerance) return;
    v.syncTarget = Math.min(t, v.duration || t);
    v.currentTime = v.syncTarget;
  });
  const show = (t) => {
    const d = duration();
    seek.max = d || 1;
    seek.value = t;
    time.textContent = t.toFixed(2) + " s";
    curves.forEach((c) => {
      const frames = Number(c.dataset.frames), x0 = Number(c.dataset.x0), x1 = Number(c.dataset.x1);
      const frame = d > 0 ? Math.min(frames - 1, Math.floor((t / d) * frames)) : 0;
      const x = frames > 1 ? x0 + (x1 - x0) * (frame / (frames - 1)) : x0;
      c.querySelector(".playhead").style.left = (100 * x) + "%";
    });
  };
  let playing = false;
  play.addEventListener("click", () => {
    playing = !playing;
    play.textContent = playing ? "pause" : "play";
    if (playing) {
      if (videos[0].ended) seekAll(0);
      videos.forEach((v) => v.play().catch(() => {}));
    } else {
      videos.forEach((v) => v.pause());
      seekAll(videos[0].currentTime, videos[0]);
    }
  });
  seek.addEventListener("input", () => seekAll(Number(seek.value)));
  videos.forEach((v) => {
    v.addEventListener("seeked", () => {
      const ours = v.syncTarget !== undefined && Math.abs(v.currentTime - v.syncTarget) < 0.01;
      v.syncTarget = undefined;
      if (!ours && !playing) seekAll(v.currentTime, v);
      show(v.currentTime);
    });
    v.addEventListener("loadedmetadata", () => show(videos[0].currentTime));
  });
  videos[0].addEventListener("timeupdate", () => {
    show(videos[0].currentTime);
    if (playing) seekAll(videos[0].currentTime, videos[0], 0.15);  // keep the others within a frame or so
  });
  videos[0].addEventListener("ended", () => {
    if (playing && loop.checked) { seekAll(0); videos.forEach((v) => v.play().catch(() => {})); }
    else if (playing) play.click();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("leaderboard");
  if (table) initBoard(table);
  const bar = document.querySelector("[data-player]");
  if (bar) initPlayer(bar);
});
