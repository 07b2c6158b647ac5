/* Reef fish identifier: "Right?" under every answer, the users' corrections (issue 19).
 *
 * static/app.js renders the answers and dispatches "fish:answer" where each goes (the result section of one photo,
 * or each row's cell of a table of several) with {file, crop, prediction, index} (the photo as sent, its crop field,
 * the API's prediction, the table row from 1). Here: "Right?" with Yes and No, and a consent checkbox
 * (off by default) to keep the photo. Yes sends the model's answer as the label; No offers the model's other
 * species, another species (a scientific name), "a fish, but none of these species" and "not a fish". Either posts
 * the same photo and crop to the corrections API (POST /api/corrections, the form's data-corrections-api) and then
 * says thanks, or the server's error. No inline code or styles (CSP); text only ever set with textContent.
 */
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  const apiUrl = form && form.dataset.correctionsApi;
  const el = window.fishPage && window.fishPage.el; // static/app.js's element builder
  if (!apiUrl || !el) {
    return; // another page, or an old browser (app.js then leaves the plain form alone too)
  }

  function verdictOf(p) {
    return p.verdict || (p.confident ? "species" : "not_sure");
  }

  /** What the model answered, as a correction's label: the class it named (or guessed), or its other verdicts. */
  function modelAnswer(p) {
    const kind = verdictOf(p);
    return kind === "unknown_species" || kind === "not_a_fish" ? kind : p.label;
  }

  function scoreName(score) {
    const name = score.common_name || score.display_name || score.label;
    return score.scientific_name && score.scientific_name !== name ? name + " (" + score.scientific_name + ")" : name;
  }

  function choice(group, value, text, extra) {
    const radio = el("input", { type: "radio", name: group, value: value, required: true });
    return el("label", { class: extra ? "choice with-field" : "choice" }, [radio, text, extra || null]);
  }

  /** The "Right?" block for one answer: {file, crop, prediction, index} from app.js; index (the row of a table of
   * several photos, from 1) makes its ids and its radio group its own. */
  function ask(answer) {
    const p = answer.prediction;
    const tag = answer.index ? "-" + answer.index : "";
    const group = "correction-label" + tag;
    const yes = el("button", { type: "button", class: "secondary", id: "correction-yes" + tag }, "Yes");
    const no = el("button", { type: "button", class: "secondary", id: "correction-no" + tag, "aria-expanded": "false" }, "No");
    const consent = el("input", { type: "checkbox", id: "correction-consent" + tag });
    const other = el("input", {
      type: "text",
      id: "correction-other" + tag,
      maxlength: "200",
      autocomplete: "off",
      placeholder: "e.g. Pterois volitans",
      "aria-label": "Another species: its scientific name",
    });
    const others = p.top_k.filter((score, i) => !(i === 0 && verdictOf(p) === "species"));
    const send = el("button", { type: "submit", id: "correction-send" + tag }, "Send");
    const fieldset = el("fieldset", {}, [
      el("legend", {}, "What is it?"),
      ...others.map((score) => choice(group, score.label, scoreName(score))),
      choice(group, "__other__", "another species: ", other),
      choice(group, "unknown_species", "a fish, but none of these species"),
      choice(group, "not_a_fish", "not a fish"),
    ]);
    const details = el("form", { class: "correction-form", id: "correction-form" + tag, hidden: true, novalidate: true }, [
      fieldset,
      el("div", { class: "actions" }, send),
    ]);
    const status = el("p", { class: "thanks", role: "status", id: "correction-status" + tag });
    const block = el("div", { class: "correction-ask", "data-testid": "correction" }, [
      el("p", { class: "right-question" }, [el("strong", {}, "Right?"), yes, no]),
      el("label", { class: "check" }, [
        consent,
        " Keep my photo so a reviewer can see it; it is re-encoded without location or camera data",
      ]),
      details,
      status,
    ]);
    const buttons = [yes, no, send];

    other.addEventListener("input", () => {
      fieldset.querySelector('input[value="__other__"]').checked = true;
    });
    no.addEventListener("click", () => {
      details.hidden = false;
      no.setAttribute("aria-expanded", "true");
      fieldset.querySelector("input").focus();
    });
    yes.addEventListener("click", () => submit(modelAnswer(p)));
    details.addEventListener("submit", (event) => {
      event.preventDefault();
      const picked = fieldset.querySelector("input[name=\"" + group + "\"]:checked");
      if (!picked) {
        say("Choose what it is first.", true);
        return;
      }
      const label = picked.value === "__other__" ? other.value.trim() : picked.value;
      if (!label) {
        say("Type the species' scientific name, e.g. Pterois volitans.", true);
        other.focus();
        return;
      }
      submit(label);
    });

    function say(text, isError) {
      status.textContent = text;
      status.classList.toggle("error", Boolean(isError));
    }

    async function submit(label) {
      const body = new FormData();
      body.append("image", answer.file, answer.file.name);
      if (answer.crop) {
        body.append("crop", answer.crop);
      }
      body.append("label", label);
      body.append("predicted_label", modelAnswer(p));
      body.append("consent", consent.checked ? "true" : "false");
      buttons.forEach((button) => (button.disabled = true));
      say("Sending…");
      try {
        const response = await fetch(apiUrl, {
          method: "POST",
          body: body,
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        const data = await response.json().catch(() => null);
        if (!response.ok) {
          throw new Error((data && data.error) || "the server answered " + response.status);
        }
        details.hidden = true;
        block.dataset.correctionId = String(data.id);
        say("Thanks — a reviewer will check it.");
      } catch (err) {
        buttons.forEach((button) => (button.disabled = false));
        const message = err instanceof TypeError ? "could not reach the server; try again" : err.message;
        say("Sorry: " + message, true);
      }
    }

    return block;
  }

  document.addEventListener("fish:answer", (event) => {
    const answer = event.detail;
    if (answer && answer.file && answer.prediction && Array.isArray(answer.prediction.top_k)) {
      event.target.append(ask(answer));
    }
  });
})();
