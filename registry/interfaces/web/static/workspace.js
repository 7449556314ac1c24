// Keyboard shortcuts for the review pages and on-demand images; the registry serves this file itself.
// A key press activates the element that declares it (data-key), unless the reviewer is typing in a field.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) { return; }
    var key = event.key === "ArrowRight" ? "j" : event.key === "ArrowLeft" ? "k" : event.key;
    var element = document.querySelector('[data-key="' + key + '"]');
    if (!element || element.disabled) { return; }
    event.preventDefault();
    element.click();
  });
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (!details.matches || !details.matches("details[data-src]") || !details.open) { return; }
    var image = details.querySelector("img");
    if (image && !image.getAttribute("src")) { image.setAttribute("src", details.getAttribute("data-src")); }
  }, true);
}());
