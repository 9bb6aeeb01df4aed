/* cvgen's command-line builder. The first half mirrors cvgen/commands.py rule for rule (its
   module docstring states the rules); tests/test_html_browser.py compares the two string for
   string. The second half binds the rules to the page. All page text is set with textContent,
   never parsed as HTML. */
(function () {
  "use strict";

  // ------------------------------------------------------------ cvgen/commands.py, in JS

  var TARGETS = ["llama-server", "llama-cli", "llama-completion"];
  var SCALE_LIMIT = 1e21;
  var NUMBER_PATTERN = /^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$/;
  var BARE_ARGUMENT_PATTERN = /^[A-Za-z0-9_./:=+,@%-]+$/;
  var LINE_JOINER = " \\\n  ";

  function CommandError(message) {
    this.name = "CommandError";
    this.message = message;
  }
  CommandError.prototype = Object.create(Error.prototype);
  CommandError.prototype.constructor = CommandError;

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function hasOwn(object, key) {
    return Object.prototype.hasOwnProperty.call(object, key);
  }

  function parseScale(axis, text) {
    if (!NUMBER_PATTERN.test(text)) {
      throw new CommandError("scale '" + text + "' for axis '" + axis + "' is not a number");
    }
    var scale = Number(text);
    if (!isFinite(scale)) {
      throw new CommandError("scale '" + text + "' for axis '" + axis + "' is not a finite number");
    }
    return scale;
  }

  function formatScale(value) {
    if (!isFinite(value) || Math.abs(value) >= SCALE_LIMIT) {
      throw new CommandError("scale must be a finite number of magnitude below 1e21");
    }
    var text = Math.abs(value).toFixed(2).replace(/0+$/, "").replace(/\.$/, "");
    if (value < 0 && text !== "0") {
      return "-" + text;
    }
    return text;
  }

  function quoteArgument(argument) {
    if (BARE_ARGUMENT_PATTERN.test(argument)) {
      return argument;
    }
    return "'" + argument.split("'").join("'\\''") + "'";
  }

  function axisNames(manifest) {
    if (!isObject(manifest.axes)) {
      throw new CommandError("pack manifest has no 'axes' object");
    }
    return Object.keys(manifest.axes);
  }

  function joinVectorPath(vectorDir, fileName) {
    if (vectorDir === "") {
      return fileName;
    }
    if (vectorDir.slice(-1) === "/") {
      return vectorDir + fileName;
    }
    return vectorDir + "/" + fileName;
  }

  function vectorPath(manifest, axis, role, vectorDir, legacySyntax) {
    var entry = manifest.axes[axis];
    var files = isObject(entry) ? entry.files : undefined;
    var fileName = isObject(files) && hasOwn(files, role) ? files[role] : undefined;
    if (typeof fileName !== "string" || fileName === "") {
      throw new CommandError(
        "pack manifest: axes." + axis + ".files." + role + " is missing or not a file name"
      );
    }
    var path = joinVectorPath(vectorDir, fileName);
    if (!legacySyntax) {
      var separators = [":", ","];
      for (var i = 0; i < separators.length; i++) {
        if (path.indexOf(separators[i]) !== -1) {
          throw new CommandError(
            "control-vector path '" + path + "' contains '" + separators[i] + "', which current " +
              "llama.cpp reads as a separator; rename the file or directory, or use " +
              "--legacy-syntax"
          );
        }
      }
    }
    return path;
  }

  function vectorOptionGroups(manifest, selection, vectorDir, legacySyntax) {
    var validAxes = axisNames(manifest);
    var seen = Object.create(null);
    var groups = [];
    selection.forEach(function (item) {
      var axis = item[0];
      var scale = item[1];
      if (validAxes.indexOf(axis) === -1) {
        throw new CommandError(
          "unknown axis '" + axis + "' in --set; the pack has: " + validAxes.join(", ")
        );
      }
      if (seen[axis]) {
        throw new CommandError("axis '" + axis + "' is given twice; set each axis once");
      }
      seen[axis] = true;
      if (!isFinite(scale) || Math.abs(scale) >= SCALE_LIMIT) {
        throw new CommandError(
          "scale for axis '" + axis + "' must be a finite number of magnitude below 1e21"
        );
      }
      var rounded = formatScale(scale);
      groups.push(["--control-vector", vectorPath(manifest, axis, "debias", vectorDir, legacySyntax)]);
      if (rounded === "0") {
        return;
      }
      var role = rounded.charAt(0) === "-" ? "negative" : "positive";
      var polePath = vectorPath(manifest, axis, role, vectorDir, legacySyntax);
      var magnitude = rounded.replace(/^-+/, "");
      if (magnitude === "1") {
        groups.push(["--control-vector", polePath]);
      } else if (legacySyntax) {
        groups.push(["--control-vector-scaled", polePath, magnitude]);
      } else {
        groups.push(["--control-vector-scaled", polePath + ":" + magnitude]);
      }
    });
    return groups;
  }

  function checkedLayerRange(manifest, layerRange) {
    var model = manifest.model;
    var nLayer = isObject(model) ? model.n_layer : undefined;
    if (typeof nLayer !== "number" || !Number.isInteger(nLayer) || nLayer < 2) {
      throw new CommandError("pack manifest: model.n_layer is " + nLayer + ", expected an integer >= 2");
    }
    var start = layerRange[0];
    var end = layerRange[1];
    if (!(1 <= start && start <= end && end <= nLayer - 1)) {
      throw new CommandError(
        "layer range " + start + " " + end + " is invalid; need 1 <= START <= END <= " +
          (nLayer - 1) + " (the model has " + nLayer + " layers and block 0 cannot be steered)"
      );
    }
    return ["--control-vector-layer-range", String(start), String(end)];
  }

  function buildCommand(manifest, selection, options) {
    if (TARGETS.indexOf(options.target) === -1) {
      throw new CommandError(
        "unknown target '" + options.target + "'; choose one of: " + TARGETS.join(", ")
      );
    }
    if (!options.modelPath) {
      throw new CommandError("model path is empty");
    }
    var groups = [[options.target], ["-m", options.modelPath]];
    groups = groups.concat(
      vectorOptionGroups(manifest, selection, options.vectorDir, options.legacySyntax)
    );
    if (options.layerRange) {
      groups.push(checkedLayerRange(manifest, options.layerRange));
    }
    var lines = groups.map(function (group) {
      return group.map(quoteArgument).join(" ");
    });
    return lines.join(options.multiline ? LINE_JOINER : " ");
  }

  function presetSelection(manifest, name) {
    var presets = manifest.presets || {};
    if (!isObject(presets)) {
      throw new CommandError("pack manifest: 'presets' is not an object");
    }
    if (!hasOwn(presets, name)) {
      var names = Object.keys(presets);
      if (names.length === 0) {
        throw new CommandError("unknown preset '" + name + "'; the pack has no presets");
      }
      throw new CommandError("unknown preset '" + name + "'; the pack has: " + names.join(", "));
    }
    var entries = presets[name];
    if (!isObject(entries)) {
      throw new CommandError("pack manifest: presets." + name + " is not an object");
    }
    var validAxes = axisNames(manifest);
    return Object.keys(entries).map(function (axis) {
      var scale = entries[axis];
      if (validAxes.indexOf(axis) === -1) {
        throw new CommandError(
          "preset '" + name + "' names unknown axis '" + axis + "'; the pack has: " +
            validAxes.join(", ")
        );
      }
      if (typeof scale !== "number" || !isFinite(scale)) {
        throw new CommandError("pack manifest: presets." + name + "." + axis + " is not a finite number");
      }
      return [axis, scale];
    });
  }

  function combinationAdvice(selection) {
    var active = selection
      .map(function (item) {
        return Number(formatScale(Math.abs(item[1])));
      })
      .filter(function (magnitude) {
        return magnitude !== 0;
      });
    var count = active.length;
    if (count < 2) {
      return null;
    }
    var upper = Math.sqrt(1 / count);
    var largest = Math.max.apply(null, active);
    if (largest <= upper) {
      return null;
    }
    return (
      "note: " + count + " axes are combined at up to |scale| " + formatScale(largest) + "; with " +
      count + " axes a safe common |scale| lies between " + formatScale(1 / count) + " and " +
      formatScale(upper) + " (1/n to sqrt(1/n)); lower them if the text degrades"
    );
  }

  function defaultModelPath(manifest) {
    var model = manifest.model;
    var source = isObject(model) ? model.source : undefined;
    if (typeof source === "string" && /\.gguf$/.test(asciiLower(source))) {
      return source;
    }
    return "MODEL.gguf";
  }

  function asciiLower(text) {
    return text.replace(/[A-Z]/g, function (c) {
      return String.fromCharCode(c.charCodeAt(0) + 32);
    });
  }

  // ------------------------------------------------------------ the page

  var DEFAULT_RANGE = 1.5;

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

  // The slider's end at one pole: the calibrated safe |scale| rounded down to 0.01, else 1.5.
  function sliderEnd(axis, role) {
    var safe = isObject(axis.safe_scale) ? axis.safe_scale[role] : undefined;
    if (typeof safe !== "number" || !isFinite(safe) || safe <= 0) {
      return null;
    }
    return Math.max(0.01, Math.floor(Math.round(safe * 1e6) / 1e4) / 100);
  }

  // One button per pole for the scale `cvgen eval` calibrated (where the KL reaches a share of
  // the budget); none for a pack that was never evaluated.
  function suggestedButtons(axis, classes) {
    var suggested = axis.suggested_scale;
    if (!isObject(suggested) || suggested.calibrated !== true) {
      return [];
    }
    var buttons = [];
    [["negative", -1, classes[0]], ["positive", 1, classes[1]]].forEach(function (pole) {
      var value = suggested[pole[0]];
      if (typeof value === "number" && isFinite(value) && value > 0) {
        var text = formatScale(pole[1] * value);
        buttons.push(element("button", {
          type: "button",
          class: "suggested " + pole[0],
          "data-scale": text,
          title: "the scale cvgen eval suggests for " + pole[2],
        }, "suggested " + text));
      }
    });
    return buttons;
  }

  function Page(data) {
    this.manifest = data.manifest;
    this.defaults = data.defaults || {};
    this.names = axisNames(this.manifest);
    this.order = this.names.slice();
    this.rows = Object.create(null);
  }

  Page.prototype.start = function () {
    this.renderModel();
    this.renderAxes();
    this.renderPresets();
    this.renderOptions();
    var page = this;
    ["target", "model-path", "vector-dir", "layer-start", "layer-end"].forEach(function (id) {
      byId(id).addEventListener("input", function () { page.update(); });
      byId(id).addEventListener("change", function () { page.update(); });
    });
    ["syntax-current", "syntax-legacy", "layer-range-on", "multiline"].forEach(function (id) {
      byId(id).addEventListener("change", function () { page.update(); });
    });
    byId("copy").addEventListener("click", function () { page.copy(); });
    this.restoreState();
    window.addEventListener("hashchange", function () {
      page.restoreState();
      page.update();
    });
    this.update();
  };

  // The selection and options live in the address's fragment (#a=AXIS&s=SCALE&...), so a
  // link or a reload brings the same command back; what the fragment leaves out takes its
  // default. Only this page reads it: browsers never send the fragment anywhere.
  Page.prototype.saveState = function () {
    var page = this;
    var params = new URLSearchParams();
    this.order.forEach(function (name) {
      var row = page.rows[name];
      if (row.enable.checked) {
        params.append("a", name);
        params.append("s", row.scale.value);
      }
    });
    params.set("target", byId("target").value);
    if (byId("syntax-legacy").checked) {
      params.set("syntax", "legacy");
    }
    if (byId("model-path").value !== this.initialModelPath) {
      params.set("model", byId("model-path").value);
    }
    if (byId("vector-dir").value !== this.initialVectorDir) {
      params.set("dir", byId("vector-dir").value);
    }
    if (byId("layer-range-on").checked) {
      params.set("layers", byId("layer-start").value + "-" + byId("layer-end").value);
    }
    if (byId("multiline").checked) {
      params.set("lines", "multi");
    }
    var hash = "#" + params.toString();
    if (hash !== window.location.hash) {
      try {
        window.history.replaceState(null, "", hash);
      } catch (error) {
        // some browsers refuse history changes on file:// pages; the page works without them
      }
    }
  };

  Page.prototype.restoreState = function () {
    var page = this;
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    var names = params.getAll("a");
    var scales = params.getAll("s");
    var chosen = [];
    this.names.forEach(function (name) {
      page.rows[name].enable.checked = false;
    });
    byId("preset").value = "";
    byId("preset-summary").textContent = "";
    names.forEach(function (name, index) {
      if (hasOwn(page.rows, name) && chosen.indexOf(name) === -1 && index < scales.length) {
        chosen.push(name);
        page.rows[name].enable.checked = true;
        page.rows[name].scale.value = scales[index];
        page.syncSlider(name);
      }
    });
    this.order = chosen.concat(this.names.filter(function (name) { return chosen.indexOf(name) === -1; }));
    byId("target").value = TARGETS.indexOf(params.get("target")) !== -1 ? params.get("target") : TARGETS[0];
    byId("syntax-legacy").checked = params.get("syntax") === "legacy";
    byId("syntax-current").checked = params.get("syntax") !== "legacy";
    byId("model-path").value = params.has("model") ? params.get("model") : this.initialModelPath;
    byId("vector-dir").value = params.has("dir") ? params.get("dir") : this.initialVectorDir;
    var layers = /^([0-9]+)-([0-9]+)$/.exec(params.get("layers") || "");
    byId("layer-range-on").checked = layers !== null;
    if (layers) {
      byId("layer-start").value = layers[1];
      byId("layer-end").value = layers[2];
    }
    byId("multiline").checked = params.get("lines") === "multi";
  };

  // the solver; under "auto" each axis's own, as the pack records it
  function methodText(method, axes) {
    if (method !== "auto" || !isObject(axes)) {
      return method;
    }
    var parts = Object.keys(axes).map(function (name) {
      var own = isObject(axes[name]) ? axes[name].method : undefined;
      return name + ": " + (typeof own === "string" ? own : "?");
    });
    return parts.length ? "auto (" + parts.join(", ") + ")" : method;
  }

  Page.prototype.renderModel = function () {
    var model = isObject(this.manifest.model) ? this.manifest.model : {};
    var settings = isObject(this.manifest.settings) ? this.manifest.settings : {};
    var llama = isObject(this.manifest.llama_cpp) ? this.manifest.llama_cpp : {};
    var layers = Array.isArray(this.manifest.layers) ? this.manifest.layers : [];
    var facts = [
      ["name", model.name],
      ["layers", model.n_layer],
      ["hidden size", model.n_embd],
      ["architecture", model.hint],
      ["steered blocks", layers.length ? layers[0] + " to " + layers[layers.length - 1] : undefined],
      ["method", methodText(settings.method, this.manifest.axes)],
      ["samples per class", settings.samples],
      ["llama.cpp commit", llama.commit || "not recorded"],
      ["made by", this.manifest.cvgen_version ? "cvgen " + this.manifest.cvgen_version : undefined],
    ];
    var list = byId("model-facts");
    facts.forEach(function (fact) {
      if (fact[1] === undefined || fact[1] === null || fact[1] === "") {
        return;
      }
      list.appendChild(element("dt", {}, fact[0]));
      list.appendChild(element("dd", { "data-fact": fact[0] }, String(fact[1])));
    });
    byId("model-title").textContent = String(model.name || "this model");
  };

  Page.prototype.renderAxes = function () {
    var container = byId("axes");
    var page = this;
    this.names.forEach(function (name, index) {
      var axis = page.manifest.axes[name];
      var classes = Array.isArray(axis.classes) ? axis.classes : ["negative", "positive"];
      var negativeEnd = sliderEnd(axis, "negative");
      var positiveEnd = sliderEnd(axis, "positive");
      var id = "axis-" + index;
      var row = element("fieldset", { class: "axis off", id: id, "data-index": String(index) });
      var legend = element("legend");
      var enableLabel = element("label");
      var enable = element("input", { type: "checkbox", id: id + "-enable", class: "enable" });
      enableLabel.appendChild(enable);
      enableLabel.appendChild(element("span", { class: "axis-name" }, name));
      legend.appendChild(enableLabel);
      row.appendChild(legend);

      var body = element("div", { class: "axis-body" });
      var sliderRow = element("div", { class: "slider-row" });
      var negativeLabel = element("span", { class: "pole negative", id: id + "-negative" }, String(classes[0]));
      var positiveLabel = element("span", { class: "pole positive", id: id + "-positive" }, String(classes[1]));
      var low = negativeEnd === null ? DEFAULT_RANGE : negativeEnd;
      var high = positiveEnd === null ? DEFAULT_RANGE : positiveEnd;
      var slider = element("input", {
        type: "range",
        id: id + "-slider",
        class: "slider",
        min: "-" + low,
        max: String(high),
        step: "0.01",
        value: "0",
      });
      slider.setAttribute(
        "aria-label",
        name + ": " + classes[0] + " (negative) to " + classes[1] + " (positive)"
      );
      sliderRow.appendChild(negativeLabel);
      sliderRow.appendChild(slider);
      sliderRow.appendChild(positiveLabel);
      body.appendChild(sliderRow);

      var scaleBox = element("div", { class: "scale-box" });
      var scaleLabel = element("label", { for: id + "-scale" }, "scale");
      var scale = element("input", {
        type: "text",
        id: id + "-scale",
        class: "scale",
        inputmode: "decimal",
        role: "spinbutton",
        spellcheck: "false",
        autocomplete: "off",
        value: "0",
      });
      scale.setAttribute("aria-label", "scale of " + name + " (negative: " + classes[0] + ", positive: " + classes[1] + ")");
      scaleBox.appendChild(scaleLabel);
      scaleBox.appendChild(scale);
      body.appendChild(scaleBox);
      suggestedButtons(axis, classes).forEach(function (button) {
        scaleBox.appendChild(button);
        button.addEventListener("click", function () {
          scale.value = button.getAttribute("data-scale");
          page.syncSlider(name);
          enable.checked = true;
          page.edited();
        });
      });

      var range =
        negativeEnd === null && positiveEnd === null
          ? "slider range ±" + DEFAULT_RANGE + " (no calibrated maximum)"
          : "calibrated safe maximum: " + classes[0] + " " + low + ", " + classes[1] + " " + high;
      var meta = element("p", { class: "axis-meta" }, (axis.description ? axis.description + " · " : "") + range);
      body.appendChild(meta);
      var warning = element("p", { class: "axis-warning", id: id + "-warning", "aria-live": "polite" });
      warning.hidden = true;
      body.appendChild(warning);
      row.appendChild(body);
      container.appendChild(row);

      page.rows[name] = {
        row: row,
        enable: enable,
        slider: slider,
        scale: scale,
        warning: warning,
        classes: classes,
        calibrated: negativeEnd !== null || positiveEnd !== null,
        low: low,
        high: high,
      };
      enable.addEventListener("change", function () { page.edited(); });
      slider.addEventListener("input", function () {
        scale.value = slider.value;
        enable.checked = true;
        page.edited();
      });
      // A key that leaves the slider where it was (End at the end, with a typed scale past
      // it) fires no input event; it still means "this value".
      slider.addEventListener("keyup", function (event) {
        var keys = ["Home", "End", "ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "PageUp", "PageDown"];
        if (keys.indexOf(event.key) !== -1 && Number(scale.value) !== Number(slider.value)) {
          scale.value = slider.value;
          enable.checked = true;
          page.edited();
        }
      });
      scale.addEventListener("input", function () {
        page.syncSlider(name);
        enable.checked = true;
        page.edited();
      });
      scale.addEventListener("keydown", function (event) {
        page.stepScale(name, event);
      });
    });
  };

  Page.prototype.syncSlider = function (name) {
    var row = this.rows[name];
    var value = NUMBER_PATTERN.test(row.scale.value) ? Number(row.scale.value) : NaN;
    if (isFinite(value)) {
      row.slider.value = String(Math.min(row.high, Math.max(-row.low, value)));
    }
  };

  // Arrow keys in the scale field step by 0.01 (with Shift, 0.1), like the slider.
  Page.prototype.stepScale = function (name, event) {
    var steps = { ArrowUp: 1, ArrowDown: -1, PageUp: 10, PageDown: -10 };
    if (!hasOwn(steps, event.key)) {
      return;
    }
    var row = this.rows[name];
    var current = NUMBER_PATTERN.test(row.scale.value) ? Number(row.scale.value) : 0;
    if (!isFinite(current)) {
      current = 0;
    }
    var step = steps[event.key] * (event.shiftKey ? 10 : 1);
    event.preventDefault();
    row.scale.value = String(Math.round(current * 100 + step) / 100);
    this.syncSlider(name);
    row.enable.checked = true;
    this.edited();
  };

  Page.prototype.renderPresets = function () {
    var select = byId("preset");
    var presets = isObject(this.manifest.presets) ? this.manifest.presets : {};
    var names = Object.keys(presets);
    names.forEach(function (name) {
      var option = element("option", {}, name);
      option.value = name;
      select.appendChild(option);
    });
    if (names.length === 0) {
      select.disabled = true;
      byId("preset-summary").textContent =
        "This pack has no presets; add one with cvgen preset add PACK NAME --set AXIS=SCALE.";
    }
    var page = this;
    select.addEventListener("change", function () {
      if (select.value !== "") {
        page.applyPreset(select.value);
      }
    });
  };

  Page.prototype.applyPreset = function (name) {
    var selection = presetSelection(this.manifest, name);
    var chosen = selection.map(function (item) { return item[0]; });
    var page = this;
    this.order = chosen.concat(this.names.filter(function (axis) { return chosen.indexOf(axis) === -1; }));
    this.names.forEach(function (axis) {
      page.rows[axis].enable.checked = false;
    });
    selection.forEach(function (item) {
      var row = page.rows[item[0]];
      row.enable.checked = true;
      row.scale.value = String(item[1]);
      page.syncSlider(item[0]);
    });
    byId("preset").value = name;
    byId("preset-summary").textContent =
      name + ": " + selection.map(function (item) { return item[0] + " " + formatScale(item[1]); }).join(", ");
    this.update();
  };

  // Any edit by hand leaves the preset: the selection is custom from then on.
  Page.prototype.edited = function () {
    var select = byId("preset");
    if (select.value !== "") {
      select.value = "";
      byId("preset-summary").textContent = "";
    }
    this.update();
  };

  Page.prototype.renderOptions = function () {
    var target = byId("target");
    TARGETS.forEach(function (name) {
      var option = element("option", {}, name);
      option.value = name;
      target.appendChild(option);
    });
    byId("model-path").value =
      typeof this.defaults.model_path === "string" ? this.defaults.model_path : defaultModelPath(this.manifest);
    byId("vector-dir").value = typeof this.defaults.vector_dir === "string" ? this.defaults.vector_dir : "";
    this.initialModelPath = byId("model-path").value;
    this.initialVectorDir = byId("vector-dir").value;
    var nLayer = isObject(this.manifest.model) ? this.manifest.model.n_layer : 2;
    var layers = Array.isArray(this.manifest.layers) && this.manifest.layers.length ? this.manifest.layers : [1, nLayer - 1];
    ["layer-start", "layer-end"].forEach(function (id) {
      byId(id).min = "1";
      byId(id).max = String(nLayer - 1);
    });
    byId("layer-start").value = String(layers[0]);
    byId("layer-end").value = String(layers[layers.length - 1]);
  };

  Page.prototype.selection = function () {
    var page = this;
    var selection = [];
    this.order.forEach(function (name) {
      var row = page.rows[name];
      if (row.enable.checked) {
        selection.push([name, parseScale(name, row.scale.value)]);
      }
    });
    return selection;
  };

  function layerBound(id) {
    var text = byId(id).value;
    if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(Number(text))) {
      throw new CommandError("layer range bound '" + text + "' is not an integer");
    }
    return Number(text);
  }

  Page.prototype.options = function () {
    var layerOn = byId("layer-range-on").checked;
    return {
      target: byId("target").value,
      modelPath: byId("model-path").value,
      vectorDir: byId("vector-dir").value,
      legacySyntax: byId("syntax-legacy").checked,
      layerRange: layerOn ? [layerBound("layer-start"), layerBound("layer-end")] : null,
      multiline: byId("multiline").checked,
    };
  };

  Page.prototype.update = function () {
    var commandNode = byId("command");
    var errorNode = byId("command-error");
    var selection = null;
    var layerOn = byId("layer-range-on").checked;
    byId("layer-start").disabled = !layerOn;
    byId("layer-end").disabled = !layerOn;
    try {
      selection = this.selection();
      var options = this.options();
      commandNode.textContent = buildCommand(this.manifest, selection, options);
      errorNode.textContent = "";
      errorNode.hidden = true;
      byId("copy").disabled = false;
      byId("cli-equivalent").textContent = selection.length ? this.cliEquivalent(selection, options) : "";
    } catch (error) {
      if (!(error instanceof CommandError)) {
        throw error;
      }
      commandNode.textContent = "";
      errorNode.textContent = error.message;
      errorNode.hidden = false;
      byId("copy").disabled = true;
      byId("cli-equivalent").textContent = "";
    }
    byId("cli-line").hidden = byId("cli-equivalent").textContent === "";
    byId("copy-status").textContent = "";
    this.updateGuidance(selection);
    this.saveState();
  };

  Page.prototype.updateGuidance = function (selection) {
    var page = this;
    var guidance = byId("guidance");
    var advice = byId("advice");
    var active = (selection || []).filter(function (item) { return roundedOrZero(item[1]) !== "0"; });
    var count = active.length;
    var upper = count >= 2 ? Math.sqrt(1 / count) : Infinity;
    if (count >= 2) {
      guidance.textContent =
        count + " axes active: a safe common |scale| lies between 1/n = " + formatScale(1 / count) +
        " and sqrt(1/n) = " + formatScale(upper) + ".";
      guidance.hidden = false;
    } else {
      guidance.textContent = "";
      guidance.hidden = true;
    }
    var note = null;
    try {
      note = selection === null ? null : combinationAdvice(selection);
    } catch (error) {
      if (!(error instanceof CommandError)) {
        throw error;
      }
    }
    advice.textContent = note || "";
    advice.hidden = !note;
    var rounded = Object.create(null);
    active.forEach(function (item) { rounded[item[0]] = Math.abs(Number(roundedOrZero(item[1]))); });
    this.names.forEach(function (name) {
      var row = page.rows[name];
      row.row.classList.toggle("off", !row.enable.checked);
      row.row.classList.toggle("over", hasOwn(rounded, name) && rounded[name] > upper);
      page.updateAxisWarning(name);
    });
  };

  // A scale too large to format (the command shows why) counts as no scale here.
  function roundedOrZero(value) {
    try {
      return formatScale(value);
    } catch (error) {
      if (!(error instanceof CommandError)) {
        throw error;
      }
      return "0";
    }
  }

  Page.prototype.updateAxisWarning = function (name) {
    var row = this.rows[name];
    var text = "";
    if (!NUMBER_PATTERN.test(row.scale.value)) {
      text = "not a number: use digits, an optional sign and decimal point (e.g. -0.35)";
    } else if (row.calibrated) {
      var value = Number(row.scale.value);
      if (value > row.high) {
        text = "above the calibrated safe maximum " + row.high + " for " + row.classes[1];
      } else if (value < -row.low) {
        text = "below the calibrated safe minimum -" + row.low + " for " + row.classes[0];
      }
    }
    row.warning.textContent = text;
    row.warning.hidden = text === "";
    var value = Number(row.slider.value);
    row.slider.setAttribute(
      "aria-valuetext",
      value === 0 ? "0 (neutral)" : Math.abs(value) + " toward " + row.classes[value < 0 ? 0 : 1]
    );
  };

  Page.prototype.cliEquivalent = function (selection, options) {
    var words = ["cvgen", "commands", this.defaults.pack || "PACK"];
    selection.forEach(function (item) {
      words.push("--set", item[0] + "=" + formatScale(item[1]));
    });
    words.push("--target", options.target);
    if (options.legacySyntax) {
      words.push("--legacy-syntax");
    }
    if (options.modelPath !== defaultModelPath(this.manifest)) {
      words.push("--model-path", options.modelPath);
    }
    if (options.vectorDir !== (this.defaults.pack || "")) {
      words.push("--vector-dir", options.vectorDir);
    }
    if (options.layerRange) {
      words.push("--layer-range", String(options.layerRange[0]), String(options.layerRange[1]));
    }
    if (options.multiline) {
      words.push("--multiline");
    }
    return words.map(quoteArgument).join(" ");
  };

  Page.prototype.copy = function () {
    var text = byId("command").textContent;
    var status = byId("copy-status");
    function fallback() {
      var area = element("textarea", { readonly: "", "aria-hidden": "true" });
      area.value = text;
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      var done = false;
      try {
        done = document.execCommand("copy");
      } catch (error) {
        done = false;
      }
      document.body.removeChild(area);
      status.textContent = done ? "Copied." : "Copy failed: select the command and copy it by hand.";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { status.textContent = "Copied."; },
        fallback
      );
    } else {
      fallback();
    }
  };

  window.cvgenBuilder = {
    CommandError: CommandError,
    buildCommand: buildCommand,
    combinationAdvice: combinationAdvice,
    defaultModelPath: defaultModelPath,
    formatScale: formatScale,
    parseScale: parseScale,
    presetSelection: presetSelection,
    quoteArgument: quoteArgument,
  };

  function main() {
    var data = JSON.parse(byId("cvgen-data").textContent);
    var page = new Page(data);
    page.start();
    window.cvgenPage = page;
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", main);
  } else {
    main();
  }
})();
