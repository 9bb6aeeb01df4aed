/* The "try it" panel, only in the page that `cvgen serve` answers at "/" (cvgen/pack/page.py
   appends this file to the builder's script then; PACK/index.html never holds it). A run posts
   one prompt twice to the server's /v1/chat/completions, at once: steered by the builder's
   current selection, and unsteered (`"control_vectors": {}`), and shows both completions side
   by side as their Server-Sent Events arrive. A new run aborts the one before. The page never
   sees the API key: the browser sends its own HTTP Basic credentials with same-origin fetches.
   All text is set with textContent or text nodes, never parsed as HTML. */
(function () {
  "use strict";

  var DEFAULT_PROMPT =
    "Write a short paragraph about an old lighthouse keeper on the night the lamp fails.";
  var DEFAULT_MAX_TOKENS = 96;
  var ENDPOINT = "v1/chat/completions";

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (key) {
      node.setAttribute(key, attributes[key]);
    });
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  // "language=+0.6, tense=-0.45": the selection as the server will run it (2-decimal scales).
  function selectionLabel(pairs) {
    return pairs
      .map(function (pair) {
        var text = window.cvgenBuilder.formatScale(pair[1]);
        return pair[0] + "=" + (text === "0" || text.charAt(0) === "-" ? text : "+" + text);
      })
      .join(", ");
  }

  // Reads Server-Sent Events from text pieces as they come; calls onData with each event's
  // data (its `data:` lines joined by newlines).
  function EventReader(onData) {
    this.buffer = "";
    this.onData = onData;
  }

  EventReader.prototype.feed = function (text) {
    this.buffer = (this.buffer + text).replace(/\r\n/g, "\n");
    var end = this.buffer.indexOf("\n\n");
    while (end !== -1) {
      var block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      var data = block
        .split("\n")
        .filter(function (line) { return line.slice(0, 5) === "data:"; })
        .map(function (line) { return line.slice(line.charAt(5) === " " ? 6 : 5); });
      if (data.length) {
        this.onData(data.join("\n"));
      }
      end = this.buffer.indexOf("\n\n");
    }
  };

  function RunError(message) {
    this.name = "RunError";
    this.message = message;
  }
  RunError.prototype = Object.create(Error.prototype);
  RunError.prototype.constructor = RunError;

  // The message of a refused request: the server's {"error": {"message"}} when it sent one.
  function refusal(response) {
    return response.text().then(function (body) {
      var message = null;
      try {
        var parsed = JSON.parse(body);
        if (parsed && parsed.error && typeof parsed.error.message === "string") {
          message = parsed.error.message;
        }
      } catch (error) {
        message = null;
      }
      if (message === null) {
        message = body.trim().slice(0, 300) || response.statusText || "no message";
      }
      throw new RunError("The server refused the request (HTTP " + response.status + "): " + message);
    });
  }

  // One streamed completion: calls column.append(text) per piece; resolves to the finish reason.
  function streamCompletion(body, signal, column) {
    return fetch(ENDPOINT, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal: signal,
    }).then(function (response) {
      if (!response.ok) {
        return refusal(response);
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var state = { done: false, finish: null };
      var events = new EventReader(function (data) {
        if (data === "[DONE]") {
          state.done = true;
          return;
        }
        var chunk = JSON.parse(data);
        if (chunk && chunk.error) {
          throw new RunError("The server stopped: " + String(chunk.error.message || "unknown error"));
        }
        var choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
        if (choice && choice.delta && typeof choice.delta.content === "string") {
          column.append(choice.delta.content);
        }
        if (choice && choice.finish_reason) {
          state.finish = String(choice.finish_reason);
        }
      });
      function pump() {
        return reader.read().then(function (result) {
          if (result.done) {
            events.feed(decoder.decode());
            if (!state.done) {
              throw new RunError("The stream ended before the server said it was done.");
            }
            return state.finish;
          }
          events.feed(decoder.decode(result.value, { stream: true }));
          return pump();
        });
      }
      return pump();
    });
  }

  // One side of the comparison: its label (the selection, or "unsteered"), the streamed text,
  // a status line and an error line.
  function Column(parent, key) {
    var box = element("section", { class: "try-column", id: "try-" + key, "aria-labelledby": "try-" + key + "-label" });
    this.label = element("h3", { class: "try-label", id: "try-" + key + "-label" });
    this.output = element("pre", { class: "try-output", id: "try-" + key + "-text", tabindex: "0", "aria-live": "polite" });
    this.status = element("p", { class: "hint try-status", id: "try-" + key + "-status", role: "status" });
    this.error = element("p", { class: "error", id: "try-" + key + "-error", role: "alert" });
    this.error.hidden = true;
    box.appendChild(this.label);
    box.appendChild(this.output);
    box.appendChild(this.status);
    box.appendChild(this.error);
    parent.appendChild(box);
  }

  // A column belongs to one run (its AbortController) at a time; a late event of an earlier
  // run finds another owner and changes nothing.
  Column.prototype.reset = function (owner, label) {
    this.owner = owner;
    this.label.textContent = label;
    this.output.textContent = "";
    this.text = document.createTextNode("");
    this.output.appendChild(this.text);
    this.status.textContent = "waiting for the server…";
    this.error.textContent = "";
    this.error.hidden = true;
  };

  Column.prototype.append = function (piece) {
    this.text.appendData(piece);
    this.status.textContent = "streaming…";
  };

  Column.prototype.finish = function (reason, seconds) {
    var why = reason === "length" ? "length (the max tokens were reached)" : reason || "unknown";
    this.status.textContent = "finished: " + why + " · " + seconds.toFixed(1) + " s";
  };

  Column.prototype.fail = function (message) {
    this.status.textContent = "";
    this.error.textContent = message;
    this.error.hidden = false;
  };

  function TryPanel(builder, serve) {
    this.builder = builder;
    this.serve = serve;
    this.controller = null;
  }

  TryPanel.prototype.render = function () {
    var section = element("section", { class: "card try-card", id: "try", "aria-labelledby": "try-title" });
    section.appendChild(element("h2", { id: "try-title" }, "Try it"));
    section.appendChild(element("p", { class: "hint" },
      "Runs the selection above on " + this.serve.model + " (served by cvgen serve) and, at the " +
      "same time, the same prompt unsteered, greedily (temperature 0). The binary, syntax, " +
      "paths and layer range apply to the command only."));
    if (this.serve.auth) {
      section.appendChild(element("p", { class: "hint" },
        "This server asks for a key: your browser sends the one it signed in with."));
    }
    var promptField = element("div", { class: "field" });
    promptField.appendChild(element("label", { for: "try-prompt" }, "Prompt"));
    var prompt = element("textarea", { id: "try-prompt", rows: "3", spellcheck: "true" });
    prompt.value = DEFAULT_PROMPT;
    promptField.appendChild(prompt);
    section.appendChild(promptField);

    var controls = element("div", { class: "try-controls" });
    var limit = this.serve.max_tokens;
    controls.appendChild(element("label", { for: "try-max-tokens" }, "Max tokens"));
    controls.appendChild(element("input", {
      type: "number", id: "try-max-tokens", min: "1", max: String(limit), step: "1",
      inputmode: "numeric", value: String(Math.min(DEFAULT_MAX_TOKENS, limit)),
    }));
    controls.appendChild(element("button", { type: "button", id: "try-run" }, "Run"));
    var stop = element("button", { type: "button", id: "try-stop", class: "secondary" }, "Stop");
    stop.disabled = true;
    controls.appendChild(stop);
    section.appendChild(controls);
    section.appendChild(element("p", { class: "hint", id: "try-selection", "aria-live": "polite" }));
    var error = element("p", { class: "error", id: "try-error", role: "alert" });
    error.hidden = true;
    section.appendChild(error);
    this.columns = element("div", { class: "try-columns" });
    this.steered = new Column(this.columns, "steered");
    this.unsteered = new Column(this.columns, "unsteered");
    this.columns.hidden = true;
    section.appendChild(this.columns);
    // right under the axes it runs, before the command's options
    var axes = byId("axes-heading").parentNode;
    axes.parentNode.insertBefore(section, axes.nextSibling);
    this.bind();
  };

  TryPanel.prototype.bind = function () {
    var panel = this;
    byId("try-run").addEventListener("click", function () { panel.run(); });
    byId("try-stop").addEventListener("click", function () { panel.stop(); });
    byId("try-prompt").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        panel.run();
      }
    });
    ["input", "change", "keyup"].forEach(function (type) {
      document.addEventListener(type, function () { panel.describe(); });
    });
    window.addEventListener("hashchange", function () { panel.describe(); });
    this.describe();
  };

  // The selection as the server would get it: [[axis, 2-decimal scale], ...].
  TryPanel.prototype.selection = function () {
    return this.builder.selection().map(function (pair) {
      return [pair[0], Number(window.cvgenBuilder.formatScale(pair[1]))];
    });
  };

  TryPanel.prototype.describe = function () {
    var text;
    try {
      var pairs = this.selection();
      text = pairs.length
        ? "Run compares " + selectionLabel(pairs) + " with the unsteered model."
        : "Tick an axis above to choose what the steered side runs.";
    } catch (error) {
      if (!(error instanceof window.cvgenBuilder.CommandError)) {
        throw error;
      }
      text = "The selection above has an error: " + error.message;
    }
    byId("try-selection").textContent = text;
  };

  TryPanel.prototype.showError = function (message) {
    var node = byId("try-error");
    node.textContent = message;
    node.hidden = message === "";
  };

  // The request's settings from the panel, or a RunError saying what to fix.
  TryPanel.prototype.request = function () {
    var pairs;
    try {
      pairs = this.selection();
    } catch (error) {
      if (!(error instanceof window.cvgenBuilder.CommandError)) {
        throw error;
      }
      throw new RunError("Fix the selection first: " + error.message);
    }
    if (pairs.length === 0) {
      throw new RunError("Tick at least one axis above: the steered side runs that selection.");
    }
    var text = byId("try-max-tokens").value;
    var maxTokens = Number(text);
    if (!/^[0-9]+$/.test(text) || maxTokens < 1 || maxTokens > this.serve.max_tokens) {
      throw new RunError("Max tokens must be a whole number from 1 to " + this.serve.max_tokens + ".");
    }
    var prompt = byId("try-prompt").value;
    if (prompt.trim() === "") {
      throw new RunError("Write a prompt first.");
    }
    var vectors = {};
    pairs.forEach(function (pair) { vectors[pair[0]] = pair[1]; });
    return { pairs: pairs, vectors: vectors, maxTokens: maxTokens, prompt: prompt };
  };

  TryPanel.prototype.run = function () {
    this.stop();
    var settings;
    try {
      settings = this.request();
    } catch (error) {
      if (!(error instanceof RunError)) {
        throw error;
      }
      this.showError(error.message);
      return;
    }
    this.showError("");
    var controller = new AbortController();
    this.controller = controller;
    byId("try-stop").disabled = false;
    this.columns.hidden = false;
    this.steered.reset(controller, selectionLabel(settings.pairs));
    this.unsteered.reset(controller, "unsteered");
    var panel = this;
    var runs = [[this.steered, settings.vectors], [this.unsteered, {}]].map(function (side) {
      return panel.runSide(controller, side[0], settings, side[1]);
    });
    Promise.all(runs).then(function () {
      if (panel.controller === controller) {
        panel.controller = null;
        byId("try-stop").disabled = true;
      }
    });
  };

  TryPanel.prototype.runSide = function (controller, column, settings, vectors) {
    var started = performance.now();
    var body = {
      model: this.serve.model,
      messages: [{ role: "user", content: settings.prompt }],
      max_tokens: settings.maxTokens,
      temperature: 0,
      stream: true,
      control_vectors: vectors,
    };
    var sink = {
      append: function (piece) {
        if (column.owner === controller) {
          column.append(piece);
        }
      },
    };
    return streamCompletion(body, controller.signal, sink).then(
      function (reason) {
        if (column.owner === controller) {
          column.finish(reason, (performance.now() - started) / 1000);
        }
      },
      function (error) {
        if (column.owner !== controller) {
          return;
        }
        if (error && error.name === "AbortError") {
          column.status.textContent = "stopped";
        } else if (error instanceof RunError) {
          column.fail(error.message);
        } else if (error instanceof SyntaxError) {
          column.fail("The server sent an event that is not JSON: " + error.message);
        } else {
          column.fail("Could not reach the server: " + (error && error.message ? error.message : String(error)));
        }
      }
    );
  };

  TryPanel.prototype.stop = function () {
    if (this.controller !== null) {
      this.controller.abort();
      this.controller = null;
    }
    byId("try-stop").disabled = true;
  };

  function main() {
    var data = JSON.parse(byId("cvgen-data").textContent);
    if (!data.serve || !window.cvgenPage) {
      return;
    }
    var panel = new TryPanel(window.cvgenPage, data.serve);
    panel.render();
    window.cvgenTry = panel;
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", main);
  } else {
    main();
  }
})();
