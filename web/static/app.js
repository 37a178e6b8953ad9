// MountainID page script: preview, drag-and-drop, phone camera, and answers without a page reload.
// Progressive enhancement: without this script the form posts and the server renders the answer.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const picker = document.getElementById("photo");
  const camera = document.getElementById("camera");
  const dropzone = document.getElementById("dropzone");
  const preview = document.getElementById("preview");
  const result = document.getElementById("result");
  const maxBytes = Number(form.dataset.maxBytes || 0);
  let previewUrl = null;
  let sentFile = null;  // the photo already sent: "Identify" does not send it twice

  function showMessage(title, text) {
    const box = document.createElement("div");
    box.className = "card error";
    box.id = "error";
    box.setAttribute("role", "alert");
    const heading = document.createElement("h2");
    heading.textContent = title;
    const para = document.createElement("p");
    para.textContent = text;
    box.append(heading, para);
    result.replaceChildren(box);
  }

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    dropzone.classList.add("has-preview");
  }

  async function identify(file) {
    if (!file) return;
    if (picker.disabled) return;
    showPreview(file);
    if (maxBytes && file.size > maxBytes) {
      showMessage("That photo is too big",
        "The file is " + (file.size / 1e6).toFixed(1) + " MB; the limit is " + Math.round(maxBytes / 1e6) + " MB.");
      return;
    }
    sentFile = file;
    const body = new FormData();
    body.append("photo", file, "upload");
    form.classList.add("busy");
    form.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(form.action + "?fragment=1", { method: "POST", body: body });
      const type = response.headers.get("Content-Type") || "";
      if (type.startsWith("text/html")) {
        result.innerHTML = await response.text();  // server-rendered, autoescaped by Jinja
      } else {
        showMessage("Something went wrong", "The server answered " + response.status + ". Please try again.");
      }
    } catch (err) {
      showMessage("No connection", "The photo could not be sent. Check your connection and try again.");
    } finally {
      form.classList.remove("busy");
      form.removeAttribute("aria-busy");
      result.scrollIntoView({ behavior: "smooth", block: "nearest" });
    }
  }

  function chosen(input) {
    return function () {
      if (input.files && input.files[0]) identify(input.files[0]);
    };
  }
  picker.addEventListener("change", chosen(picker));
  camera.addEventListener("change", chosen(camera));

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const file = (picker.files && picker.files[0]) || (camera.files && camera.files[0]);
    if (!file) picker.click();
    else if (file !== sentFile) identify(file);
  });

  // No model yet: ask the API every few seconds and switch the page on when one is published.
  const noModel = document.getElementById("no-model");
  if (noModel) {
    const timer = setInterval(async function () {
      try {
        const response = await fetch("/api/v1/model", { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        clearInterval(timer);
        noModel.remove();
        [picker, camera, document.getElementById("submit")].forEach(function (el) { el.disabled = false; });
      } catch (err) { /* offline for now: the next tick tries again */ }
    }, 5000);
  }

  // The "why" drawing: Enlarge fills the screen with it; the button, Escape or a click beside it closes it.
  // Delegated: the answer arrives after the page loaded.
  function enlarge(figure, on) {
    figure.classList.toggle("enlarged", on);
    const button = figure.querySelector("[data-enlarge]");
    button.setAttribute("aria-expanded", String(on));
    button.textContent = on ? "Close" : "Enlarge";
  }
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-enlarge]");
    const open = document.querySelector(".evidence-figure.enlarged");
    if (button) enlarge(button.closest(".evidence-figure"), !button.closest(".enlarged"));
    else if (open && event.target === open) enlarge(open, false);
  });
  document.addEventListener("keydown", function (event) {
    const open = document.querySelector(".evidence-figure.enlarged");
    if (open && event.key === "Escape") enlarge(open, false);
  });

  ["dragenter", "dragover"].forEach(function (name) {
    dropzone.addEventListener(name, function (event) {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  });
  ["dragleave", "dragend"].forEach(function (name) {
    dropzone.addEventListener(name, function () { dropzone.classList.remove("dragging"); });
  });
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) identify(file);
  });
})();
