/* The dashboard (/): polls /api/live about every second with the page's session and
 * updates the page. The transactions stored since the last poll are prepended, whatever
 * their event time (one the table shows already is skipped: an answer may repeat rows
 * while an earlier one commits; at most KEEP rows kept); the chart, the top users, the
 * counts and the health are redrawn. A failed poll shows "reconnecting" and polling goes
 * on; a position the app refuses (400: made by another version) is dropped.
 * Needs app.js (window.txstream).
 */
"use strict";

(function () {
  var KEEP = 50;
  var INTERVAL = 800; // ms between the end of one poll and the next
  var ANNOUNCE_EVERY = 15000; // ms: the screen-reader summary of new rows, not more often
  var SVG = "http://www.w3.org/2000/svg";

  var root = document.getElementById("dashboard");
  if (!root) {
    return;
  }
  var liveUrl = root.getAttribute("data-live-url");
  var userUrl = root.getAttribute("data-user-url"); // ends in "/0"
  var position = root.getAttribute("data-position") || "";
  var rows = document.getElementById("live-rows");
  var toggle = document.getElementById("live-toggle");
  var state = document.getElementById("live-state");
  var announcer = document.getElementById("live-announce");
  var paused = false;
  var timer = null;
  var unannounced = 0;
  var lastAnnounced = 0;

  function setState(text, kind) {
    state.textContent = text;
    state.setAttribute("data-state", kind);
  }

  function userLink(userId) {
    var a = document.createElement("a");
    a.href = userUrl.replace(/0$/, String(userId));
    a.textContent = String(userId);
    return a;
  }

  function cell(tr, className) {
    var td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    tr.appendChild(td);
    return td;
  }

  function transactionRow(tx) {
    var tr = document.createElement("tr");
    tr.className = "new";
    tr.setAttribute("data-txn-id", tx.txn_id);
    var t = document.createElement("time");
    window.txstream.time(t, tx.time);
    cell(tr, "time").appendChild(t);
    cell(tr).appendChild(userLink(tx.user_id));
    window.txstream.money(cell(tr, "num money"), tx.amount);
    cell(tr, "id").textContent = tx.txn_id;
    return tr;
  }

  function addTransactions(items) {
    var empty = document.getElementById("live-empty");
    if (items.length && empty) {
      empty.hidden = true;
    }
    var shown = new Set();
    for (var r = 0; r < rows.children.length; r++) {
      shown.add(rows.children[r].getAttribute("data-txn-id"));
    }
    items = items.filter(function (tx) {
      return !shown.has(tx.txn_id);
    });
    for (var i = items.length - 1; i >= 0; i--) {
      rows.insertBefore(transactionRow(items[i]), rows.firstChild);
    }
    while (rows.children.length > KEEP) {
      rows.removeChild(rows.lastChild);
    }
    unannounced += items.length;
    var now = Date.now();
    if (unannounced && now - lastAnnounced >= ANNOUNCE_EVERY) {
      announcer.textContent =
        unannounced + " new transaction" + (unannounced === 1 ? "" : "s");
      unannounced = 0;
      lastAnnounced = now;
    }
  }

  function drawRate(rate) {
    var chart = document.getElementById("rate-chart");
    var series = rate.series;
    var width = 900, height = 160, bar = width / series.length;
    var most = 1, total = 0, lastMinute = 0;
    series.forEach(function (point, i) {
      most = Math.max(most, point.stored);
      total += point.stored;
      if (i >= series.length - 60 / rate.bucket_seconds) {
        lastMinute += point.stored;
      }
    });
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    series.forEach(function (point, i) {
      var h = Math.round((point.stored / most) * (height - 4));
      var r = document.createElementNS(SVG, "rect");
      r.setAttribute("x", String(i * bar + 1));
      r.setAttribute("y", String(height - h));
      r.setAttribute("width", String(Math.max(bar - 2, 1)));
      r.setAttribute("height", String(h));
      r.setAttribute("class", "bar");
      var title = document.createElementNS(SVG, "title");
      title.textContent = window.txstream.formatTime(point.at).text + ": " + point.stored;
      r.appendChild(title);
      svg.appendChild(r);
    });
    chart.replaceChildren(svg);
    document.getElementById("rate-summary").textContent =
      lastMinute.toLocaleString() + " stored in the last minute, " +
      total.toLocaleString() + " in 15 minutes (peak " + most.toLocaleString() + " per " +
      rate.bucket_seconds + " s)";
  }

  function drawTop(tbodyId, users) {
    var tbody = document.getElementById(tbodyId);
    var fresh = users.map(function (u) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-user-id", String(u.user_id));
      cell(tr).appendChild(userLink(u.user_id));
      cell(tr, "num").textContent = u.count.toLocaleString();
      window.txstream.money(cell(tr, "num money"), u.sum);
      return tr;
    });
    tbody.replaceChildren.apply(tbody, fresh);
  }

  // Counts Redis lost are counted again from a time: "since ...", or "rebuilding".
  function countNote(counts, since) {
    if (counts.rebuilding) {
      return "rebuilding";
    }
    return since ? "since " + window.txstream.formatTime(since).text : "";
  }

  function drawCounts(data) {
    var counts = data.counts;
    var shown = {
      "count-stored": [counts.stored, counts.rebuilding ? "rebuilding" : ""],
      "count-duplicates": [counts.duplicates, countNote(counts, counts.since.duplicates)],
      "count-dead": [counts.dead_letters, countNote(counts, counts.since.dead_letters)],
      "count-subscribers": [data.subscribers, ""],
    };
    Object.keys(shown).forEach(function (id) {
      document.getElementById(id).textContent = shown[id][0].toLocaleString();
      var note = document.getElementById(id + "-note");
      if (note) {
        note.textContent = shown[id][1];
      }
    });
    ["redis", "database"].forEach(function (name) {
      var el = document.getElementById("health-" + name);
      el.textContent = data.health[name];
      el.className = data.health[name];
    });
  }

  function showDown() {
    ["redis", "database"].forEach(function (name) {
      var el = document.getElementById("health-" + name);
      el.textContent = "unknown";
      el.className = "down";
    });
  }

  function schedule() {
    clearTimeout(timer);
    if (!paused) {
      timer = setTimeout(poll, INTERVAL);
    }
  }

  function poll() {
    var url = liveUrl + (position ? "?after=" + encodeURIComponent(position) : "");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 400) {
          position = ""; // the next poll starts again from the newest
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        if (paused) {
          return; // what came while pausing is fetched again on resume
        }
        addTransactions(data.items);
        position = data.position;
        drawRate(data.rate);
        drawTop("top-by-sum", data.top.by_sum);
        drawTop("top-by-count", data.top.by_count);
        drawCounts(data);
        setState("Live", "live");
      })
      .catch(function () {
        if (!paused) {
          setState("Reconnecting…", "reconnecting");
          showDown();
        }
      })
      .then(schedule);
  }

  toggle.addEventListener("click", function () {
    paused = !paused;
    toggle.setAttribute("aria-pressed", paused ? "true" : "false");
    toggle.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      clearTimeout(timer);
      setState("Paused", "paused");
    } else {
      setState("Live", "live");
      poll();
    }
  });

  if (root.getAttribute("data-live") === "on") {
    poll();
  } else {
    toggle.disabled = true;
    setState("Not live: an older page", "off");
  }
})();
