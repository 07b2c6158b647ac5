/* Reef fish identifier: progressive enhancement of the upload form.
 *
 * Without this file the page is a plain HTML form posted to "/" (the server renders the results). With it:
 * drag and drop or paste photos, previews before sending, and no reload: the photos are posted to the JSON API
 * (/api/predict, several "image" fields in one request) and the results, including the CSV download, are
 * rendered here. No framework, no inline code: the Content-Security-Policy allows scripts from 'self' only.
 * Text from files or the server is only ever set with textContent, never parsed as HTML.
 */
"use strict";

(function () {
  document.documentElement.classList.add("js");

  const form = document.getElementById("upload-form");
  if (!form || !window.fetch || !window.FormData) {
    return; // another page, or an old browser: the plain form keeps working
  }

  const input = document.getElementById("image");
  const dropzone = document.getElementById("dropzone");
  const preview = document.getElementById("preview");
  const statusLine = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const results = document.getElementById("results");
  const submit = document.getElementById("submit");
  const explainBox = document.getElementById("explain");
  const apiUrl = form.dataset.api;
  const topK = form.dataset.topK;
  const maxFiles = Number(form.dataset.maxFiles) || 16;
  const numClasses = Number(form.dataset.numClasses) || 0;
  const subject = (form.dataset.subject || "").trim() || null; // "fish", or null: word the verdicts generically
  const modelUrl = form.dataset.modelUrl || "/model";
  const csvFilename = form.dataset.csvFilename;
  // The server's CSV layout (model/results.py): {file: column, fields: [[column, API field or null for the
  // error]], top_k: [the i-th pair's column names, "{i}" counting from 1]}
  const csvLayout = JSON.parse(form.dataset.csvLayout);

  let files = [];
  let previewUrls = [];
  let resultUrls = [];
  // what static/corrections.js (the "Right?" question, loaded after this file) builds its elements with
  window.fishPage = Object.freeze({ el: el });

  /** Build an element: attributes (null values skipped) and children (strings become text nodes). */
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of [].concat(children === undefined ? [] : children)) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function percent(value, decimals) {
    return (value * 100).toFixed(decimals === undefined ? 1 : decimals) + "%";
  }

  /** The short name of a class score for sentences: its common name, else its display name. */
  function shortName(score) {
    return score.common_name || score.display_name || score.label;
  }

  function plural(count, word) {
    return count + " " + word + (count === 1 ? "" : "s");
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function showError(message) {
    errorBox.replaceChildren(el("strong", {}, "Sorry:"), " " + message);
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.replaceChildren();
  }

  /** The server's words for too many photos (app/uploads.py check_uploads), said before sending them. */
  function tooMany(count) {
    return "too many images: " + count + " in one request, the limit is " + maxFiles;
  }

  function setBusy(busy) {
    submit.disabled = busy;
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  // --- choosing photos: picker, drag and drop, paste --------------------------------------------------------

  function renderPreview() {
    previewUrls.forEach((url) => URL.revokeObjectURL(url));
    previewUrls = [];
    const figures = files.map((file) => {
      let picture;
      if (file.type.startsWith("image/")) {
        const url = URL.createObjectURL(file);
        previewUrls.push(url);
        picture = el("img", { src: url, alt: "" });
      } else {
        picture = el("span", { class: "not-image" }, "not an image");
      }
      return el("figure", {}, [picture, el("figcaption", {}, file.name)]);
    });
    preview.replaceChildren(...figures);
    preview.hidden = files.length === 0;
  }

  // --- crop: a box over the one chosen photo, dragged and resized with a mouse, a finger or the keyboard ---------

  /** The box, as fractions of the upright photo (browsers draw images upright, as the server decodes them). */
  let crop = { x: 0, y: 0, w: 1, h: 1 };
  const MIN_SIDE = 0.05; // the smallest box, a fraction of the photo's side
  const STEP = 0.02; // one arrow key press
  const cropBox = el("div", {
    class: "crop-box",
    tabindex: "0",
    role: "group",
    "aria-label": "Crop box: arrow keys move it, Shift + arrow keys resize it",
    "data-testid": "crop-box",
  }, [el("span", { class: "crop-handle", "aria-hidden": "true" })]);
  const cropImage = el("img", { alt: "The chosen photo: draw the box around the fish" });
  const cropReset = el("button", { type: "button", id: "crop-reset" }, "Use the whole photo");
  const cropEditor = el("div", { class: "crop-editor", id: "crop-editor", hidden: true }, [
    el("p", { class: "help", id: "crop-help" },
      "Draw the box around the fish for a better answer: drag it, drag its corner to resize it (or use the arrow keys)."),
    el("div", { class: "crop-frame" }, [cropImage, cropBox]),
    cropReset,
  ]);
  preview.after(cropEditor);

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  function isWhole() {
    return crop.x <= 0 && crop.y <= 0 && crop.w >= 1 && crop.h >= 1;
  }

  /** The `crop` field of the API: "x,y,w,h", or "" for the whole photo. */
  function cropField() {
    return isWhole() ? "" : [crop.x, crop.y, crop.w, crop.h].map((v) => v.toFixed(4)).join(",");
  }

  function drawCrop() {
    cropBox.style.left = crop.x * 100 + "%";
    cropBox.style.top = crop.y * 100 + "%";
    cropBox.style.width = crop.w * 100 + "%";
    cropBox.style.height = crop.h * 100 + "%";
    cropBox.dataset.crop = cropField();
    cropReset.disabled = isWhole();
  }

  /** Move the box to (x, y) or resize it to (w, h), kept inside the photo and no smaller than MIN_SIDE. */
  function setCrop(next) {
    const w = clamp(next.w, MIN_SIDE, 1);
    const h = clamp(next.h, MIN_SIDE, 1);
    crop = { x: clamp(next.x, 0, 1 - w), y: clamp(next.y, 0, 1 - h), w: w, h: h };
    crop.w = Math.min(crop.w, 1 - crop.x);
    crop.h = Math.min(crop.h, 1 - crop.y);
    drawCrop();
  }

  function resetCrop() {
    setCrop({ x: 0, y: 0, w: 1, h: 1 });
  }

  cropReset.addEventListener("click", () => {
    resetCrop();
    cropBox.focus();
  });

  cropBox.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    const resizing = event.target.classList.contains("crop-handle");
    const frame = cropImage.getBoundingClientRect();
    const start = { px: event.clientX, py: event.clientY, crop: { ...crop } };
    cropBox.setPointerCapture(event.pointerId);
    const move = (e) => {
      const dx = (e.clientX - start.px) / frame.width;
      const dy = (e.clientY - start.py) / frame.height;
      const c = start.crop;
      setCrop(resizing ? { x: c.x, y: c.y, w: c.w + dx, h: c.h + dy } : { x: c.x + dx, y: c.y + dy, w: c.w, h: c.h });
    };
    const stop = () => {
      cropBox.removeEventListener("pointermove", move);
      cropBox.removeEventListener("pointerup", stop);
      cropBox.removeEventListener("pointercancel", stop);
    };
    cropBox.addEventListener("pointermove", move);
    cropBox.addEventListener("pointerup", stop);
    cropBox.addEventListener("pointercancel", stop);
  });

  cropBox.addEventListener("keydown", (event) => {
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const arrow = arrows[event.key];
    if (!arrow) {
      return;
    }
    event.preventDefault();
    const [dx, dy] = arrow.map((d) => d * STEP);
    const c = crop;
    setCrop(event.shiftKey ? { x: c.x, y: c.y, w: c.w + dx, h: c.h + dy } : { x: c.x + dx, y: c.y + dy, w: c.w, h: c.h });
  });

  /** Show the crop editor for one chosen photo (several photos are sent whole). */
  function renderCropEditor() {
    const one = files.length === 1 && files[0].type.startsWith("image/") ? files[0] : null;
    cropEditor.hidden = !one;
    resetCrop();
    if (one) {
      cropImage.src = previewUrls[0];
    } else {
      cropImage.removeAttribute("src");
    }
  }

  /** Take these files as the choice; `fromInput` when they already are the input's files. */
  function setFiles(list, fromInput) {
    files = Array.from(list);
    if (!fromInput) {
      try {
        const transfer = new DataTransfer();
        files.forEach((file) => transfer.items.add(file));
        input.files = transfer.files; // so the plain form would post them too
      } catch (err) {
        // Browsers without a DataTransfer constructor: the choice lives in `files` only.
      }
    }
    renderPreview();
    renderCropEditor();
    clearError();
    if (files.length > maxFiles) {
      showError(tooMany(files.length));
    }
    if (files.length === 0) {
      setStatus("");
    } else if (files.length === 1) {
      setStatus("1 photo chosen: " + files[0].name + ". Press Identify.");
    } else {
      setStatus(files.length + " photos chosen. Press Identify.");
    }
  }

  function hasFiles(event) {
    return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  }

  input.addEventListener("change", () => setFiles(input.files, true));
  // Space opens the picker natively; make Enter do so too, as on a button.
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      input.click();
    }
  });

  ["dragenter", "dragover"].forEach((type) => {
    dropzone.addEventListener(type, (event) => {
      if (!hasFiles(event)) {
        return;
      }
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      dropzone.classList.add("dragover");
    });
  });
  dropzone.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget || !dropzone.contains(event.relatedTarget)) {
      dropzone.classList.remove("dragover");
    }
  });
  // A photo dropped anywhere on the page is taken too, instead of the browser leaving the page to show it.
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) {
      event.preventDefault();
    }
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) {
      return;
    }
    event.preventDefault();
    dropzone.classList.remove("dragover");
    if (event.dataTransfer.files.length) {
      setFiles(event.dataTransfer.files, false);
    }
  });

  document.addEventListener("paste", (event) => {
    const pasted = Array.from((event.clipboardData && event.clipboardData.files) || []).filter((file) =>
      file.type.startsWith("image/"),
    );
    if (!pasted.length) {
      return;
    }
    event.preventDefault();
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
    const named = pasted.map((file, i) => {
      const extension = (file.type.split("/")[1] || "png").replace(/[^a-z0-9]/gi, "");
      const suffix = pasted.length > 1 ? "-" + (i + 1) : "";
      return new File([file], "pasted-" + stamp + suffix + "." + extension, { type: file.type });
    });
    setFiles(named, false);
  });

  // --- sending: one request for all photos, repeated without any photo the server refuses --------------------

  /** Classify `chosen`; returns one {file, prediction, error} per file, in order. */
  async function classifyAll(chosen) {
    const entries = chosen.map((file) => ({ file: file, prediction: null, error: null }));
    let pending = entries.slice();
    while (pending.length) {
      const body = new FormData();
      pending.forEach((entry) => body.append("image", entry.file, entry.file.name));
      if (pending.length === 1 && chosen.length === 1 && cropField()) {
        pending[0].crop = cropField(); // the part of the one photo inside the box
        body.append("crop", pending[0].crop);
      }
      if (pending.length === 1 && chosen.length === 1 && explainBox && explainBox.checked) {
        body.append("explain", "true"); // one explanation per request: for one photo only
      }
      body.append("top_k", topK);
      const response = await fetch(apiUrl, {
        method: "POST",
        body: body,
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const data = await response.json().catch(() => null);
      if (response.ok && data) {
        if (pending.length === 1) {
          pending[0].prediction = data;
        } else {
          data.predictions.forEach((prediction, i) => {
            pending[Number.isInteger(prediction.index) ? prediction.index : i].prediction = prediction;
          });
        }
        break;
      }
      const message = (data && data.error) || "the server answered " + response.status + " " + response.statusText;
      const bad = data && Number.isInteger(data.index) ? data.index : null;
      if (pending.length > 1 && bad !== null && bad < pending.length) {
        pending[bad].error = message.replace(/^image \d+ of \d+: /, "");
        pending = pending.filter((_, i) => i !== bad);
      } else if (pending.length === 1 && entries.length > 1) {
        pending[0].error = message;
        break;
      } else {
        throw new Error(message);
      }
    }
    return entries;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!files.length) {
      showError("choose an image file to upload first");
      input.focus();
      return;
    }
    if (files.length > maxFiles) {
      showError(tooMany(files.length));
      return;
    }
    clearError();
    setBusy(true);
    setStatus("Identifying " + plural(files.length, "photo") + "…");
    try {
      const entries = await classifyAll(files);
      renderResults(entries);
      const failed = entries.filter((entry) => entry.error).length;
      setStatus(
        entries.length === 1
          ? "Done."
          : "Done: " + plural(entries.length - failed, "photo") + " identified" + (failed ? ", " + failed + " refused." : "."),
      );
    } catch (err) {
      setStatus("");
      showError(err instanceof TypeError ? "could not reach the server; check your connection and try again" : err.message);
    } finally {
      setBusy(false);
    }
  });

  // --- results: the same markup as the server renders without JavaScript ---------------------------------------

  function bar(value, name, css, low) {
    return el(
      "meter",
      {
        class: css || "bar",
        min: "0",
        max: "1",
        low: low === undefined ? null : low.toFixed(4),
        optimum: low === undefined ? null : "1",
        value: value.toFixed(4),
        "aria-label": name + ": " + percent(value),
      },
      percent(value),
    );
  }

  // --- verdicts: the same words as verdict_headline() in app/web.py and the macros of templates/index.html -----

  /** The prediction's verdict; answers of a server without verdicts have only `confident`. */
  function verdictOf(p) {
    return p.verdict || (p.confident ? "species" : "not_sure");
  }

  /** "fish" -> "a fish", "eel" -> "an eel" (by the first letter only). */
  function withArticle(noun) {
    return (/^[aeiou]/i.test(noun) ? "an " : "a ") + noun;
  }

  /** How the page names a family: "a damselfish (Pomacentridae)", or "one of the Pomacentridae". */
  function familyPhrase(family) {
    return family.common_name ? withArticle(family.common_name) + " (" + family.name + ")" : "one of the " + family.name;
  }

  /** What the page says about one photo: the species, "Not sure: maybe X or Y", a fish it does not know, or not a
   *  fish at all (generic words where the model records no subject noun); with the family where it is likely, as
   *  verdict_headline() in app/web.py. */
  function headline(p) {
    const family = p.family && p.family.likely ? p.family : null;
    switch (verdictOf(p)) {
      case "species":
        return p.common_name || p.display_name;
      case "not_sure": {
        const names = p.top_k.slice(0, 2).map(shortName).join(" or ");
        return family ? "Not sure of the species: " + familyPhrase(family) + ", maybe " + names : "Not sure: maybe " + names;
      }
      case "unknown_species": {
        if (family) {
          const kind = family.common_name ? family.common_name + " species" : "species of that family";
          const known = family.species > 1 ? "none of the " + family.species + " " + kind : "not the one " + kind;
          const phrase = familyPhrase(family);
          return phrase.charAt(0).toUpperCase() + phrase.slice(1) + ", but probably " + known + " this model knows";
        }
        return subject
          ? "Probably " + withArticle(subject) + " this model does not know"
          : "Probably none of the species this model knows";
      }
      default:
        return subject
          ? "This does not look like " + withArticle(subject)
          : "This does not look like anything this model was trained on";
    }
  }

  /** Whether the answer is about a species (named or guessed), so that its confidence means something. */
  function showsConfidence(p) {
    return ["species", "not_sure"].includes(verdictOf(p));
  }

  /** The headline (+ the scientific name of a named species), as in the template's `verdict` macro. */
  function verdict(p) {
    const kind = verdictOf(p);
    const css = kind === "species" ? "species" : "species " + kind.replace(/_/g, "-");
    const nodes = [el("p", { class: css }, headline(p))];
    if (kind === "species" && p.common_name && p.scientific_name) {
      nodes.push(el("p", { class: "scientific" }, el("i", { lang: "la" }, p.scientific_name)));
    }
    return nodes;
  }

  /** Why no species is named, under the headline of one photo (the template's `hint` macro), or null. */
  function hint(p) {
    const kind = verdictOf(p);
    if (kind === "not_sure" && p.confidence >= p.threshold) {
      // named below the model's logit threshold: confident among its species, but a weak match to all of them
      return el(
        "p",
        { class: "hint" },
        "The best guess matches the species this model knows only weakly: it may be a similar fish of another " +
          "species. Try a sharper photo, cropped to one fish.",
      );
    }
    if (kind === "not_sure") {
      return el(
        "p",
        { class: "hint" },
        "The best guess is below the " +
          percent(p.threshold) +
          " confidence this model needs to name a species. Try a sharper photo, cropped to one fish.",
      );
    }
    const known = el("a", { href: modelUrl }, numClasses + " species");
    if (kind === "unknown_species") {
      return el("p", { class: "hint" }, ["This model knows ", known, ", and this photo looks like none of them."]);
    }
    if (kind === "not_a_fish") {
      return el("p", { class: "hint" }, [
        "This model knows ",
        known,
        (subject ? " of " + subject : "") + ": try a photo with one of them in view.",
      ]);
    }
    return null;
  }

  function objectUrl(file) {
    const url = URL.createObjectURL(file);
    resultUrls.push(url);
    return url;
  }

  function singleResult(entry) {
    const p = entry.prediction;
    const details = verdict(p);
    if (showsConfidence(p)) {
      details.push(
        el("p", { class: "confidence" }, ["Confidence ", el("strong", {}, percent(p.confidence))]),
        bar(p.confidence, "Confidence", "bar confidence-bar", p.threshold),
      );
    }
    details.push(hint(p));
    const rows = p.top_k.map((score) =>
      el("tr", {}, [
        el("th", { scope: "row" }, score.display_name),
        el("td", { class: "number" }, percent(score.confidence)),
        el("td", { class: "bar-cell" }, bar(score.confidence, score.display_name)),
      ]),
    );
    const caption = verdictOf(p) === "species" ? "Top " + p.top_k.length + " species" : "Closest species it knows";
    return el("section", { class: "card result", "aria-labelledby": "result-heading", "data-verdict": verdictOf(p) }, [
      el("h2", { id: "result-heading", tabindex: "-1" }, "Result"),
      el("div", { class: "result-body" }, [
        el("img", { class: "thumbnail", src: objectUrl(entry.file), alt: "The photo you sent" }),
        p.explanation
          ? el("figure", { class: "explanation" }, [
              el("img", {
                class: "thumbnail",
                src: p.explanation,
                alt: "Where the model looked: a heat map over the photo, red where it looked most",
              }),
              el("figcaption", {}, "Where it looked for " + shortName(p.top_k[0]) + " (red: most)"),
            ])
          : null,
        el("div", { class: "verdict" }, details),
      ]),
      el("table", { class: "top-k" }, [
        el("caption", {}, caption),
        el(
          "thead",
          {},
          el("tr", {}, [
            el("th", { scope: "col" }, "Species"),
            el("th", { scope: "col", class: "number" }, "Probability"),
            el("th", { scope: "col" }, el("span", { class: "visually-hidden" }, "Bar")),
          ]),
        ),
        el("tbody", {}, rows),
      ]),
    ]);
  }

  function tableResults(entries) {
    const rows = entries.map((entry, index) => {
      const p = entry.prediction;
      const cells = [
        el("td", {}, entry.file.type.startsWith("image/") ? el("img", { class: "row-thumbnail", src: objectUrl(entry.file), alt: "" }) : null),
        el("th", { scope: "row", class: "file-name" }, entry.file.name),
      ];
      if (p) {
        cells.push(
          el("td", {}, verdict(p)),
          el(
            "td",
            { class: "confidence-cell" },
            showsConfidence(p)
              ? [
                  el("span", { class: "number" }, percent(p.confidence)),
                  " ",
                  bar(p.confidence, "Confidence", "bar", p.threshold),
                ]
              : el("span", { class: "number" }, "–"),
          ),
          el("td", { class: "top-cell", "data-index": String(index) }, [
            verdictOf(p) === "species" ? null : el("p", { class: "top-label" }, "Closest species it knows"),
            el(
              "ol",
              { class: "top-list" },
              p.top_k.map((score) =>
                el("li", {}, [
                  el("span", {}, score.display_name),
                  " ",
                  el("span", { class: "number" }, percent(score.confidence)),
                  " ",
                  bar(score.confidence, score.display_name, "bar small"),
                ]),
              ),
            ),
          ]),
        );
      } else {
        cells.push(el("td", { colspan: "3", class: "row-error" }, [el("strong", {}, "Sorry:"), " " + entry.error]));
      }
      return el("tr", { "data-verdict": p ? verdictOf(p) : null }, cells);
    });
    const csvUrl = URL.createObjectURL(new Blob([resultsCsv(entries)], { type: "text/csv;charset=utf-8" }));
    resultUrls.push(csvUrl);
    return el("section", { class: "card results", "aria-labelledby": "results-heading" }, [
      el("h2", { id: "results-heading", tabindex: "-1" }, "Results for " + entries.length + " photos"),
      el(
        "p",
        {},
        el("a", { class: "button", id: "csv-download", href: csvUrl, download: csvFilename }, "Download the results (CSV)"),
      ),
      el("div", { class: "table-scroll", role: "region", "aria-labelledby": "results-heading", tabindex: "0" }, [
        el("table", { class: "results-table" }, [
          el(
            "thead",
            {},
            el("tr", {}, [
              el("th", { scope: "col" }, el("span", { class: "visually-hidden" }, "Photo")),
              el("th", { scope: "col" }, "File"),
              el("th", { scope: "col" }, "Species"),
              el("th", { scope: "col" }, "Confidence"),
              el("th", { scope: "col" }, "Top " + topK),
            ]),
          ),
          el("tbody", {}, rows),
        ]),
      ]),
    ]);
  }

  function renderResults(entries) {
    resultUrls.forEach((url) => URL.revokeObjectURL(url));
    resultUrls = [];
    const section = entries.length === 1 ? singleResult(entries[0]) : tableResults(entries);
    results.replaceChildren(section);
    if (entries.length === 1) {
      // static/corrections.js adds "Right?" under the answer: the photo and crop as sent, and the answer
      const answer = { file: entries[0].file, crop: entries[0].crop || "", prediction: entries[0].prediction };
      section.dispatchEvent(new CustomEvent("fish:answer", { bubbles: true, detail: answer }));
    } else {
      // and under each photo's answer in the table (no crop: it is for one photo only); index from 1
      section.querySelectorAll("td.top-cell[data-index]").forEach((cell) => {
        const index = Number(cell.dataset.index);
        const answer = { file: entries[index].file, crop: "", prediction: entries[index].prediction, index: index + 1 };
        cell.dispatchEvent(new CustomEvent("fish:answer", { bubbles: true, detail: answer }));
      });
    }
    const heading = section.querySelector("h2");
    if (heading.getBoundingClientRect().top > window.innerHeight) {
      heading.scrollIntoView({ block: "start" });
    }
  }

  // --- CSV: the server's layout (data-csv-layout from model/results.py, used by app/web.py and predict.py) ------

  /** One CSV field: no formula prefixes for spreadsheets, quoted when it holds a comma, quote or line break. */
  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) {
      text = "'" + text;
    }
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  /** A value of the API's JSON as CSV text, as the server writes it: numbers (probabilities) with 4 decimals. */
  function csvText(value) {
    if (Array.isArray(value)) {
      return value.map(csvText).join(","); // a crop: x,y,w,h
    }
    return typeof value === "number" ? value.toFixed(4) : value;
  }

  /** The value at a dotted path of a prediction ("family.name"), null where a part is missing (as the server). */
  function fieldAt(p, path) {
    return path.split(".").reduce((value, part) => (value === null || value === undefined ? null : value[part]), p) ?? null;
  }

  function resultsCsv(entries) {
    const k = Math.max(0, ...entries.map((entry) => (entry.prediction ? entry.prediction.top_k.length : 0)));
    const header = [csvLayout.file, ...csvLayout.fields.map((pair) => pair[0])];
    for (let i = 1; i <= k; i += 1) {
      header.push(...csvLayout.top_k.map((name) => name.replace("{i}", String(i))));
    }
    const lines = [header];
    entries.forEach((entry) => {
      const p = entry.prediction;
      const row = [entry.file.name];
      csvLayout.fields.forEach(([, field]) => row.push(field === null ? entry.error : p ? fieldAt(p, field) : null));
      (p ? p.top_k.slice(0, k) : []).forEach((score) => row.push(score.label, score.confidence));
      while (row.length < header.length) {
        row.push(null); // fewer classes than k, or no prediction: empty cells, as the server pads
      }
      lines.push(row.map(csvText));
    });
    return lines.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }

  if (input.files && input.files.length) {
    setFiles(input.files, true); // files the browser kept after going back
  }
})();
