"""MkDocs hook: tables generated from the code, so the docs cannot drift from it.

A page that holds one of the markers below gets the table in its place:

* ``<!-- nin_keras:flags -->``: every flag of ``python -m nin_keras.fit``, from the
  settings schema (:data:`nin_keras.settings.SETTINGS`), then the flags the fit
  parser adds itself (``--config``, ``--resume``, ``--overwrite``);
* ``<!-- nin_keras:presets -->``: every preset of :data:`nin_keras.presets.PRESETS`;
* ``<!-- nin_keras:cli MODULE -->``: every flag of ``MODULE.build_parser()`` (tuning,
  export, bench), from the parser itself.

Nothing here imports TensorFlow: the schema, the presets and the fit parser are light.
``tests/test_docs.py`` checks the flag table covers every flag of the fit parser.
"""

import argparse
import importlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FLAGS_MARKER = "<!-- nin_keras:flags -->"
PRESETS_MARKER = "<!-- nin_keras:presets -->"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(value):
    return f"`{value}`"


def _flag_cell(setting):
    names = [setting.option, *setting.aliases]
    if setting.type is bool:
        names = [f"{setting.option} / --no-{setting.option[2:]}"]
    return ", ".join(_code(n) for n in names)


def _value_cell(setting):
    if setting.type is bool:
        return "on / off"
    if setting.choices is not None:
        return ", ".join(_code(c) for c in setting.choices)
    return (setting.metavar or setting.type.__name__.upper())


def _default_cell(setting):
    if isinstance(setting.default, bool):
        return "on" if setting.default else "off"
    if setting.default is not None:
        return _code(setting.default)
    if setting.optional:
        return "not set"
    if setting.fallback is not None:
        fallback = setting.fallback
        if isinstance(fallback, bool):
            return "the preset's, else " + ("on" if fallback else "off")
        return f"the preset's, else {_code(round(fallback, 4) if isinstance(fallback, float) else fallback)}"
    return "the preset's"


def flag_rows():
    """(flags, value, default, meaning) for every flag of ``python -m nin_keras.fit``."""
    from nin_keras import settings
    from nin_keras.fit import build_parser

    rows, covered = [], set()
    for s in settings.SETTINGS:
        if not s.flag:
            continue
        meaning = s.help[0].upper() + s.help[1:]
        if s.rule:
            meaning += f"; must be {s.rule}"
        rows.append((_flag_cell(s), _value_cell(s), _default_cell(s), meaning))
        covered |= {s.option, *s.aliases}
        if s.type is bool:
            covered.add("--no-" + s.option[2:])
    for action in build_parser()._actions:
        options = [o for o in action.option_strings if o.startswith("--") and o not in covered and o != "--help"]
        if options:
            value = "switch" if action.nargs == 0 else (action.metavar or "FILE")
            rows.append((", ".join(_code(o) for o in options), value, "not set", action.help[0].upper() + action.help[1:]))
    return rows


def flags_table():
    """The Markdown table of fit's flags (see :func:`flag_rows`)."""
    lines = ["| flag | value | default | meaning |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in flag_rows()]
    return "\n".join(lines)


def _input_cell(model):
    shape = "×".join(str(d) for d in model.get("input_shape", ()))
    size = model.get("image_size")
    if size:
        size = size if isinstance(size, (list, tuple)) else (size, size)
        shape += " → " + "×".join(str(d) for d in size) + " in the graph"
    return shape


def presets_table():
    """The Markdown table of the presets, in definition order (the default first)."""
    from nin_keras.presets import DEFAULT_PRESET, PRESETS

    lines = ["| preset | input | epochs | batch | optimizer, learning rate | what |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, preset in PRESETS.items():
        fit = preset.get("fit", {})
        label = _code(name) + (" (default)" if name == DEFAULT_PRESET else "")
        recipe = f"{fit.get('optimizer', '')} {fit.get('learning_rate', '')}".strip()
        what = preset["description"]
        if preset.get("export"):
            what += " Export defaults: " + ", ".join(f"`{k}={v}`" for k, v in preset["export"].items()) + "."
        row = (label, _input_cell(preset.get("model", {})), fit.get("epochs", ""), fit.get("batch_size", ""), recipe,
               what)
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


CLI_MARKER = re.compile(r"<!-- nin_keras:cli ([a-z_.]+) -->")


def cli_table(module):
    """The Markdown table of every argument of ``module.build_parser()``."""
    parser = importlib.import_module(module).build_parser()
    lines = ["| argument | default | meaning |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = action.option_strings or [action.metavar or action.dest]
        if isinstance(action, argparse.BooleanOptionalAction):
            names = [n for n in names if not n.startswith("--no-")]
            names[0] += f" / --no-{names[0][2:]}"
        default = action.default
        if isinstance(action, argparse._StoreFalseAction) or default in (None, False, (), [], argparse.SUPPRESS):
            default = "not set"
        elif default is True:
            default = "on"
        else:
            default = _code(default)
        choices = f" ({', '.join(map(str, action.choices))})" if action.choices else ""
        meaning = (action.help or "") % {"default": action.default, "prog": parser.prog} if action.help else ""
        row = (", ".join(_code(n) for n in names), default, meaning + choices)
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


GENERATORS = {FLAGS_MARKER: flags_table, PRESETS_MARKER: presets_table}


def on_page_markdown(markdown, page, config, files):
    """MkDocs event: replace each marker by its generated table."""
    for marker, generate in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return CLI_MARKER.sub(lambda m: cli_table(m.group(1)), markdown)
