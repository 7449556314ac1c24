// The workspace's only script; the registry serves it itself. Pages work without it (every action is a form);
// it adds keyboard shortcuts, and on the match page: the query and a candidate side by side with synchronised
// zoom and pan (wheel, drag, pinch, double-click), switching candidates (arrow keys, clicks, swipes), and the
// matched keypoints drawn over both photos from the server's correspondences (/ui/pairs/Q/C.json).
(function () {
  "use strict";

  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  // --- keys: an element that declares data-key is activated by that key -----------------------------------
  var keyHandlers = {};
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) { return; }
    if (keyHandlers[event.key]) { event.preventDefault(); keyHandlers[event.key](); return; }
    var element = document.querySelector('[data-key="' + (window.CSS && CSS.escape ? CSS.escape(event.key) : event.key) + '"]');
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

  // --- the queue: "all shown" selects every row -------------------------------------------------------------
  var all = document.querySelector("input[data-selects]");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('input[type=checkbox][name="' + all.getAttribute("data-selects") + '"]')
        .forEach(function (box) { box.checked = all.checked; });
    });
  }

  // --- the match page ---------------------------------------------------------------------------------------
  var stage = document.querySelector(".stage");
  if (!stage) { return; }
  var panes = [document.getElementById("query-pane"), document.getElementById("candidate-pane")];
  var images = panes.map(function (pane) { return pane.querySelector("img"); });
  var zooms = panes.map(function (pane) { return pane.querySelector(".zoom"); });
  var overlays = panes.map(function (pane) { return pane.querySelector(".overlay"); });
  var state = document.getElementById("pairs-state");
  var view = { scale: 1, x: 0, y: 0 };  // shared by both photos: translation as fractions of each photo's size
  var pairs = null;
  var showPairs = true;
  var SVG = "http://www.w3.org/2000/svg";

  function fit(index) {
    var image = images[index];
    if (!image || !image.naturalWidth) { return; }
    var box = image.closest(".viewport");
    var scale = Math.min(box.clientWidth / image.naturalWidth, box.clientHeight / image.naturalHeight);
    image.style.width = Math.round(image.naturalWidth * scale) + "px";
    image.style.height = Math.round(image.naturalHeight * scale) + "px";
    overlays[index].setAttribute("viewBox", "0 0 " + image.naturalWidth + " " + image.naturalHeight);
    overlays[index].setAttribute("preserveAspectRatio", "none");
    apply();
    draw();
  }

  function apply() {
    zooms.forEach(function (zoom, index) {
      if (!zoom) { return; }
      var image = images[index];
      var w = image.offsetWidth, h = image.offsetHeight;
      zoom.style.transform = "translate(" + (view.x * w) + "px," + (view.y * h) + "px) scale(" + view.scale + ")";
    });
  }

  function clamp() {
    view.scale = Math.max(1, Math.min(8, view.scale));
    if (view.scale === 1) { view.x = 0; view.y = 0; return; }
    view.x = Math.min(0, Math.max(1 - view.scale, view.x));
    view.y = Math.min(0, Math.max(1 - view.scale, view.y));
  }

  // zoom by `factor` around the point at fractions (u, v) of the photo: that point stays where it is on screen
  function zoomAt(factor, u, v) {
    var before = view.scale;
    view.scale = Math.max(1, Math.min(8, before * factor));
    view.x += (before - view.scale) * u;
    view.y += (before - view.scale) * v;
    clamp();
    apply();
  }

  function localFraction(index, clientX, clientY) {
    // the point under the cursor as a fraction of the unzoomed photo
    var rect = images[index].getBoundingClientRect();
    var u = (clientX - rect.left) / rect.width, v = (clientY - rect.top) / rect.height;
    return [Math.max(0, Math.min(1, u)), Math.max(0, Math.min(1, v))];
  }

  function resetZoom() { view = { scale: 1, x: 0, y: 0 }; apply(); }

  function colour(index) { return "hsl(" + Math.round((index * 137.508) % 360) + " 85% 52%)"; }

  function highlight(index, on) {
    overlays.forEach(function (svg) {
      if (!svg) { return; }
      var dot = svg.querySelector('circle[data-pair="' + index + '"]');
      if (dot) { dot.classList.toggle("hot", on); }
    });
  }

  function draw() {
    overlays.forEach(function (svg) { if (svg) { while (svg.firstChild) { svg.removeChild(svg.firstChild); } } });
    if (!pairs || !images[0] || !images[1] || !images[0].naturalWidth || !images[1].naturalWidth) { return; }
    var sizes = images.map(function (image) { return [image.naturalWidth, image.naturalHeight]; });
    pairs.pairs.forEach(function (pair, index) {
      [0, 1].forEach(function (side) {
        var dot = document.createElementNS(SVG, "circle");
        var size = sizes[side];
        dot.setAttribute("cx", pair[side * 2] * size[0]);
        dot.setAttribute("cy", pair[side * 2 + 1] * size[1]);
        dot.setAttribute("r", Math.max(2.5, 0.008 * Math.max(size[0], size[1])));
        dot.setAttribute("data-pair", index);
        dot.setAttribute("fill", colour(index));
        dot.setAttribute("stroke", pair[5] ? "#fff" : colour(index));
        if (!pair[5]) { dot.setAttribute("class", "unverified"); }
        dot.addEventListener("pointerenter", function () { highlight(index, true); });
        dot.addEventListener("pointerleave", function () { highlight(index, false); });
        overlays[side].appendChild(dot);
      });
    });
  }

  function loadPairs() {
    pairs = null;
    draw();
    if (!images[0] || !images[1]) { return; }
    var query = images[0].getAttribute("data-annotation"), candidate = images[1].getAttribute("data-annotation");
    state.textContent = "Finding the matching points…";
    fetch("/ui/pairs/" + query + "/" + candidate + ".json", { credentials: "same-origin" })
      .then(function (response) { if (!response.ok) { throw new Error(response.status); } return response.json(); })
      .then(function (found) {
        if (images[0].getAttribute("data-annotation") !== String(found.query) ||
            images[1].getAttribute("data-annotation") !== String(found.candidate)) { return; }  // switched since
        pairs = found;
        stage.setAttribute("data-drawn", found.count);
        state.textContent = found.count + " matching point" + (found.count === 1 ? "" : "s") + " drawn (" +
          found.verified + " verified, filled; unverified as rings). Same colour = same point; " +
          "hover one to see its partner; m hides them.";
        draw();
      })
      .catch(function () { state.textContent = "The matching points could not be computed for this pair."; });
  }

  images.forEach(function (image, index) {
    if (!image) { return; }
    image.addEventListener("load", function () { fit(index); });
    if (image.complete) { fit(index); }
  });
  window.addEventListener("resize", function () { fit(0); fit(1); });

  // zoom and pan, both photos together
  panes.forEach(function (pane, index) {
    var box = pane.querySelector(".viewport");
    if (!box || !images[index]) { return; }
    var pointers = {}, last = null, pinch = null, start = null;
    box.addEventListener("wheel", function (event) {
      event.preventDefault();
      var at = localFraction(index, event.clientX, event.clientY);
      zoomAt(Math.exp(-event.deltaY * 0.0015), at[0], at[1]);
    }, { passive: false });
    box.addEventListener("dblclick", function (event) {
      if (view.scale > 1) { resetZoom(); return; }
      var at = localFraction(index, event.clientX, event.clientY);
      zoomAt(2.5, at[0], at[1]);
    });
    box.addEventListener("pointerdown", function (event) {
      pointers[event.pointerId] = [event.clientX, event.clientY];
      if (event.pointerType === "mouse") { box.setPointerCapture(event.pointerId); }  // touch captures itself
      var ids = Object.keys(pointers);
      if (ids.length === 1) { last = [event.clientX, event.clientY]; start = last; box.classList.add("dragging"); }
      if (ids.length === 2) {
        var a = pointers[ids[0]], b = pointers[ids[1]];
        pinch = Math.hypot(a[0] - b[0], a[1] - b[1]);
      }
    });
    box.addEventListener("pointermove", function (event) {
      if (!pointers[event.pointerId]) { return; }
      pointers[event.pointerId] = [event.clientX, event.clientY];
      var ids = Object.keys(pointers);
      if (ids.length === 2 && pinch) {
        var a = pointers[ids[0]], b = pointers[ids[1]];
        var distance = Math.hypot(a[0] - b[0], a[1] - b[1]);
        var at = localFraction(index, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
        zoomAt(distance / pinch, at[0], at[1]);
        pinch = distance;
      } else if (ids.length === 1 && last && view.scale > 1) {
        view.x += (event.clientX - last[0]) / images[index].offsetWidth;
        view.y += (event.clientY - last[1]) / images[index].offsetHeight;
        clamp();
        apply();
      }
      last = [event.clientX, event.clientY];
    });
    function end(event) {
      if (!pointers[event.pointerId]) { return; }
      delete pointers[event.pointerId];
      if (box.hasPointerCapture(event.pointerId)) { box.releasePointerCapture(event.pointerId); }
      if (Object.keys(pointers).length < 2) { pinch = null; }
      if (Object.keys(pointers).length === 0) {
        box.classList.remove("dragging");
        // a horizontal swipe on an unzoomed photo switches candidate
        if (start && view.scale === 1 && event.pointerType !== "mouse") {
          var dx = event.clientX - start[0], dy = event.clientY - start[1];
          if (Math.abs(dx) > 60 && Math.abs(dx) > 2 * Math.abs(dy)) {
            var direction = dx < 0 ? 1 : -1;
            window.setTimeout(function () { step(direction); }, 0);  // after the gesture has ended
          }
        }
        last = null; start = null;
      }
    }
    box.addEventListener("pointerup", end);
    box.addEventListener("pointercancel", end);
  });

  // candidates: one at a time beside the query
  var cards = Array.prototype.slice.call(document.querySelectorAll(".candidates .candidate"));
  var current = 0;

  function caption(thumb) {
    var figcaption = document.getElementById("candidate-caption");
    figcaption.textContent = "";
    var strong = document.createElement("strong");
    var link = document.createElement("a");
    link.href = "/ui/individuals/" + encodeURIComponent(thumb.getAttribute("data-code"));
    link.textContent = thumb.getAttribute("data-code");
    strong.appendChild(document.createTextNode(thumb.getAttribute("data-rank") + ". "));
    strong.appendChild(link);
    figcaption.appendChild(strong);
    figcaption.appendChild(document.createTextNode(" · fused " + thumb.getAttribute("data-fused") +
      (thumb.getAttribute("data-words") ? " · " + thumb.getAttribute("data-words") : "")));
  }

  function showCandidate(thumb) {
    if (!thumb || !images[1]) { return; }
    document.querySelectorAll(".candidates .thumb").forEach(function (t) { t.setAttribute("aria-pressed", String(t === thumb)); });
    var card = thumb.closest(".candidate");
    cards.forEach(function (c, i) { c.setAttribute("aria-current", String(c === card)); if (c === card) { current = i; } });
    var annotation = thumb.getAttribute("data-candidate");
    if (images[1].getAttribute("data-annotation") !== annotation) {
      images[1].setAttribute("data-annotation", annotation);
      images[1].alt = "candidate " + thumb.getAttribute("data-code");
      images[1].src = "/ui/thumbs/" + annotation + "/640.jpg";
      resetZoom();
      loadPairs();
    }
    caption(thumb);
    // bring the card into the strip's view, scrolling only the strip (never the page under the reviewer)
    var strip = card.parentElement;
    if (card.offsetLeft < strip.scrollLeft || card.offsetLeft + card.offsetWidth > strip.scrollLeft + strip.clientWidth) {
      strip.scrollLeft = card.offsetLeft - strip.offsetLeft;
    }
  }

  function step(delta) {
    if (!cards.length) { return; }
    var next = (current + delta + cards.length) % cards.length;
    showCandidate(cards[next].querySelector(".thumb"));
  }

  cards.forEach(function (card) {
    card.addEventListener("click", function (event) {
      if (event.target.closest("a")) { return; }
      showCandidate(event.target.closest(".thumb") || card.querySelector(".thumb"));
    });
  });
  document.querySelectorAll(".query-strip .thumb").forEach(function (thumb, index, all) {
    thumb.addEventListener("click", function () {
      all.forEach(function (t) { t.setAttribute("aria-pressed", String(t === thumb)); });
      var annotation = thumb.getAttribute("data-query");
      images[0].setAttribute("data-annotation", annotation);
      images[0].src = "/ui/thumbs/" + annotation + "/640.jpg";
      images[0].alt = "the animal to identify, photo " + (index + 1) + " of " + all.length;
      var which = document.getElementById("query-which");
      if (which) { which.textContent = String(index + 1); }
      resetZoom();
      loadPairs();
    });
  });
  if (cards.length) { var first = cards[0].querySelector(".thumb"); if (first) { first.setAttribute("aria-pressed", "true"); } }

  keyHandlers.ArrowRight = function () { step(1); };
  keyHandlers.ArrowLeft = function () { step(-1); };
  keyHandlers.m = function () { showPairs = !showPairs; stage.classList.toggle("pairs-off", !showPairs); };
  keyHandlers["0"] = resetZoom;
  loadPairs();
}());
