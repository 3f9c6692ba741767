/* txstream's shared page helpers, for every page: money and times as people read them.
 *
 *   txstream.money(el, "-1234.50")  el shows "−1,234.50", with the class "negative"
 *   txstream.time(el, "2024-05-06T12:00:00.000000Z")  el shows the viewer's local time,
 *                                   its title the UTC time
 *   txstream.enhance(root)          does both for every [data-amount] and time[datetime]
 *                                   under root (run on page load for the whole page)
 * Amounts stay exact: they are formatted as text, never parsed into floats.
 */
"use strict";

window.txstream = (function () {
  var MINUS = "\u2212";

  /** "-1234567.50" -> {text: "−1,234,567.50", negative: true}; other text unchanged. */
  function formatMoney(amount) {
    var match = /^(-?)([0-9]+)\.([0-9]{2})$/.exec(String(amount));
    if (!match) {
      return { text: String(amount), negative: false };
    }
    var whole = match[2].replace(/\B(?=([0-9]{3})+(?![0-9]))/g, ",");
    var negative = match[1] === "-" && /[1-9]/.test(match[2] + match[3]);
    return { text: (negative ? MINUS : "") + whole + "." + match[3], negative: negative };
  }

  function money(el, amount) {
    var shown = formatMoney(amount);
    el.textContent = shown.text;
    el.setAttribute("data-amount", amount);
    el.classList.toggle("negative", shown.negative);
  }

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  /** An ISO UTC time ("...Z", microseconds kept in the title) in the viewer's local time. */
  function formatTime(iso) {
    var date = new Date(String(iso).replace(/(\.[0-9]{3})[0-9]*Z$/, "$1Z"));
    if (isNaN(date.getTime())) {
      return { text: String(iso), title: "" };
    }
    var local =
      date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
    return { text: local, title: String(iso).replace("T", " ").replace("Z", " UTC") };
  }

  function time(el, iso) {
    var shown = formatTime(iso);
    el.textContent = shown.text;
    el.setAttribute("datetime", iso);
    if (shown.title) {
      el.title = shown.title;
    }
  }

  function enhance(root) {
    root.querySelectorAll("[data-amount]").forEach(function (el) {
      money(el, el.getAttribute("data-amount"));
    });
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      time(el, el.getAttribute("datetime"));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
  });

  return {
    formatMoney: formatMoney,
    money: money,
    formatTime: formatTime,
    time: time,
    enhance: enhance,
  };
})();
