"""Attribute and object vocabularies: canonical names, attribute kinds and surface forms.

    python -c "from data_filters.vocab import load_vocabulary as L; v = L('builtin'); print(len(v.attributes), len(v.objects))"

A vocabulary maps every *surface form* (a lowercased, tokenised phrase such as "sea lions" or
"gray") to its canonical name ("sea lion", "grey"). Plurals are generated for objects only.
Sources (see load_vocabulary):
  builtin              ImageNet class names from open_clip + vocab_builtin.yaml (adjectives by kind)
  benchmark:/folder    ImageNet-AO folders named "<attribute> <object>" (spaces or underscores)
  world:/path          a toy world's world.json (or the directory holding it)
  /path/file.yaml      {attributes: {kind: [name | {name: [synonyms]}]}, objects: [...], plurals: {..}}
  /path/file.txt       one entry a line: "attribute[ KIND]: name[, synonym...]" or "object: name[, synonym...]"
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BUILTIN_YAML = Path(__file__).with_name("vocab_builtin.yaml")
# Words: runs of letters/digits. Anything else (spaces, hyphens, underscores, apostrophes) separates
# words, so "red-breasted merganser" and "Shih_Tzu" are matched token by token.
_WORD = re.compile(r"[^\W_]+")

IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
    "goose": "geese", "foot": "feet", "tooth": "teeth", "ox": "oxen", "louse": "lice",
    "fish": "fish", "sheep": "sheep", "deer": "deer", "moose": "moose", "bison": "bison",
    "wolf": "wolves", "leaf": "leaves", "knife": "knives", "wife": "wives", "loaf": "loaves",
    "shelf": "shelves", "calf": "calves", "half": "halves", "scarf": "scarves", "thief": "thieves",
    "elf": "elves", "life": "lives", "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes",
    "echo": "echoes", "cactus": "cacti", "fungus": "fungi", "octopus": "octopuses",
}


def phrase(text: str) -> str:
    """Normal form used for matching: lowercased words joined by single spaces ("Sea-Lion" -> "sea lion")."""
    return " ".join(_WORD.findall(text.lower()))


_SEPARATORS = re.compile(r"[\s_]+")  # between the words of a benchmark folder name


def class_folders(root) -> list[Path]:
    """A benchmark's class folders: the directories under `root` (not `root` itself) that hold files
    and no sub-directories, in path order. The one walk that finds them (the vocabulary's
    from_benchmark and the contamination report both read their names with `split_pair_name`)."""
    root = Path(root)
    return sorted((Path(d) for d, dirs, files in os.walk(root) if files and not dirs and Path(d) != root), key=str)


def split_pair_name(name: str, vocab: "Vocabulary | None" = None) -> tuple[str, str] | None:
    """The (attribute, object) a benchmark folder such as "red sea_lions" names, or None: the one
    parser of folder names (evaluation, contamination, benchmark vocabularies, seen-pair marking).

        split_pair_name("red sea_lions")            # ('red', 'sea lions'): the first word, then the rest
        split_pair_name("red sea_lions", builtin)   # ('red', 'sea lion'): canonical names (Vocabulary.split_pair)

    With a vocabulary the shortest attribute whose rest is an object wins, so multi-word names,
    plurals and synonyms resolve as they do in captions; None when no cut resolves. Without one,
    words are separated by spaces and underscores and lowercased (CLIP's tokenizer lowercases too).
    """
    if vocab is not None:
        return vocab.split_pair(name)
    words = [w for w in _SEPARATORS.split(name.strip().lower()) if w]
    return (words[0], " ".join(words[1:])) if len(words) >= 2 else None


def plural(noun: str, irregular: dict | None = None) -> str:
    """English plural of a (possibly multi-word) noun; only the last word changes."""
    head, _, last = noun.rpartition(" ")
    table = {**IRREGULAR_PLURALS, **(irregular or {})}
    if last in table:
        word = table[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


@dataclass
class Vocabulary:
    """Canonical attributes/objects and surface-form -> canonical maps.

    attribute_forms / object_forms keys are phrase()-normalised surface forms. A surface form may be
    both an attribute and an object ("orange"); the parser decides from context.
    """

    attributes: list[str]
    objects: list[str]
    attribute_kinds: dict[str, str]
    attribute_forms: dict[str, str] = field(default_factory=dict)
    object_forms: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def build(cls, attributes: dict, objects: dict, kinds: dict, plurals: dict | None = None,
              source: str = "", short_forms: dict | None = None) -> "Vocabulary":
        """From {canonical attribute: [synonyms]}, {canonical object: [synonyms]}, {attribute: kind}.

        Explicit names and synonyms win over generated plurals and short_forms ({form: object});
        an explicit form claimed by two canonical names of the same role is a ValueError.
        """
        attr_forms: dict[str, str] = {}
        obj_forms: dict[str, str] = {}
        for forms, entries, role in ((attr_forms, attributes, "attribute"), (obj_forms, objects, "object")):
            for name, synonyms in entries.items():
                for form in [name, *synonyms]:
                    key = phrase(form)
                    if not key:
                        continue
                    if forms.get(key, name) != name:
                        raise ValueError(f"{role} form {form!r} is listed for both {forms[key]!r} and {name!r}")
                    forms[key] = name
        # Generated forms only fill gaps: "glasses" as an explicit name beats "glass" + s.
        generated = {}
        for name, synonyms in objects.items():
            for form in [name, *synonyms]:
                key = phrase(form)
                if key:
                    generated.setdefault(plural(key, plurals), name)
        generated.update({phrase(k): v for k, v in (short_forms or {}).items()})
        for key, name in generated.items():
            obj_forms.setdefault(key, name)
        return cls(list(attributes), list(objects), dict(kinds), attr_forms, obj_forms, source)

    def split_pair(self, name: str, new_objects: bool = False) -> tuple[str, str] | None:
        """Canonical (attribute, object) named by "red_sea_lions" or "red sea lion", or None: the
        vocabulary's half of `split_pair_name`, the one parser of benchmark folder names.

        Words are split on anything but letters and digits; every cut point is tried and the first
        (shortest attribute) whose two sides are surface forms of this vocabulary wins. With
        `new_objects`, a name no cut resolves still splits after its longest leading attribute form,
        the rest being an object this vocabulary does not know (its words lowercased).
        """
        words = phrase(name).split(" ")
        for cut in range(1, len(words)):
            attr = self.attribute_forms.get(" ".join(words[:cut]))
            obj = self.object_forms.get(" ".join(words[cut:]))
            if attr is not None and obj is not None:
                return attr, obj
        if new_objects:
            for cut in range(len(words) - 1, 0, -1):
                attr = self.attribute_forms.get(" ".join(words[:cut]))
                if attr is not None:
                    return attr, " ".join(words[cut:])
        return None

    # ------------------------------------------------------------ constructors
    @classmethod
    def builtin(cls) -> "Vocabulary":
        """ImageNet class names (+ common nouns) and vocab_builtin.yaml's adjectives by kind.

        ImageNet names are cleaned: "(...)" is dropped, "a / b" gives name a with synonym b, and the
        last word of a multi-word name becomes a short form when no other name ends in it and it is
        not itself a name or attribute ("sulphur-crested cockatoo" -> "cockatoo"; not "shark").
        """
        data = yaml.safe_load(BUILTIN_YAML.read_text())
        attributes, kinds = _parse_attribute_section(data["attributes"], "vocab_builtin.yaml")
        objects: dict[str, list[str]] = {}
        for raw in imagenet_classnames():
            parts = [phrase_keep(p) for p in re.sub(r"\(.*?\)", "", raw).split("/")]
            parts = [p for p in parts if p]
            if parts and parts[0] not in objects:  # two ImageNet classes share a name: keep one
                objects[parts[0]] = parts[1:]
        for entry in data.get("common_objects", []):
            name, syns = _entry(entry, "common_objects")
            objects.setdefault(name, []).extend(syns)
        taken = {phrase(f) for n, s in objects.items() for f in [n, *s]} | {phrase(a) for a in attributes}
        last_words: dict[str, list[str]] = {}
        for name in objects:
            words = phrase(name).split(" ")
            if len(words) > 1:
                last_words.setdefault(words[-1], []).append(name)
        short = {w: names[0] for w, names in last_words.items() if len(names) == 1 and w not in taken}
        return cls.build(attributes, objects, kinds, source="builtin", short_forms=short)

    @classmethod
    def from_benchmark(cls, folder, known: "Vocabulary | None" = None) -> "Vocabulary":
        """From ImageNet-AO class folders "<attribute> <object>" anywhere under `folder`.

        Class folders are the directories that hold files but no sub-directories, each split by
        `split_pair_name`: with `known`, in its canonical names where it resolves the folder (an
        object it lacks is kept as written after its longest attribute form); otherwise, and
        without `known`, the first word is the attribute and the rest the object.
        """
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"benchmark folder not found: {root}")
        attributes: dict[str, list[str]] = {}
        objects: dict[str, list[str]] = {}
        kinds: dict[str, str] = {}
        for folder in class_folders(root):
            name = folder.name
            pair = (known.split_pair(name, new_objects=True) if known else None) or split_pair_name(name)
            if pair is None:
                continue
            attr, obj = pair[0].lower(), pair[1].lower()
            attributes.setdefault(attr, [])
            objects.setdefault(obj, [])
            kinds[attr] = known.attribute_kinds.get(attr, "unknown") if known else "unknown"
        if not objects:
            raise ValueError(f"no '<attribute> <object>' class folders found under {root}")
        return cls.build(attributes, objects, kinds, source=f"benchmark:{root}")

    @classmethod
    def from_world(cls, path) -> "Vocabulary":
        """From a toy world's world.json (keys objects, attributes, attribute_kinds, plurals)."""
        path = Path(path)
        file = path / "world.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"toy world file not found: {file}")
        info = json.loads(file.read_text())
        plurals = info.get("plurals", {})
        objects = {o: [plurals[o]] if o in plurals else [] for o in info["objects"]}
        attributes = {a: [] for a in info["attributes"]}
        return cls.build(attributes, objects, info["attribute_kinds"], source=f"world:{file}")

    @classmethod
    def from_file(cls, path) -> "Vocabulary":
        """From a user .yaml/.yml or .txt file (formats in the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict) or "attributes" not in data or "objects" not in data:
                raise ValueError(f"{path}: a vocabulary YAML needs 'attributes' and 'objects' keys")
            attributes, kinds = _parse_attribute_section(data["attributes"], str(path))
            objects = dict(_entry(e, str(path)) for e in data["objects"])
            return cls.build(attributes, objects, kinds, data.get("plurals"), source=str(path))
        if path.suffix.lower() == ".txt":
            return _from_txt(path)
        raise ValueError(f"{path}: vocabulary files must end in .yaml, .yml or .txt")


def phrase_keep(text: str) -> str:
    """Lowercase and collapse spaces but keep hyphens: the readable canonical form of a name."""
    return " ".join(text.lower().split())


def _entry(entry, where: str) -> tuple[str, list[str]]:
    """'name' or {name: [synonyms]} -> (name, synonyms)."""
    if isinstance(entry, str):
        return phrase_keep(entry), []
    if isinstance(entry, dict) and len(entry) == 1:
        (name, syns), = entry.items()
        syns = [syns] if isinstance(syns, str) else list(syns or [])
        return phrase_keep(str(name)), [str(s) for s in syns]
    raise ValueError(f"{where}: expected a name or {{name: [synonyms]}}, got {entry!r}")


def _parse_attribute_section(section, where: str) -> tuple[dict, dict]:
    if isinstance(section, list):  # no kinds given
        section = {"other": section}
    if not isinstance(section, dict):
        raise ValueError(f"{where}: 'attributes' must map kinds to lists of names")
    attributes, kinds = {}, {}
    for kind, entries in section.items():
        for e in entries:
            name, syns = _entry(e, where)
            attributes[name] = syns
            kinds[name] = str(kind)
    return attributes, kinds


def _from_txt(path: Path) -> Vocabulary:
    attributes, objects, kinds = {}, {}, {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, sep, names = line.partition(":")
        role, *kind = head.split()
        forms = [phrase_keep(n) for n in names.split(",") if n.strip()]
        if not sep or role.lower() not in ("attribute", "object") or len(kind) > 1 or not forms:
            raise ValueError(f"{path}:{lineno}: expected 'attribute[ KIND]: name[, synonym...]' or 'object: name[, ...]'")
        if role.lower() == "attribute":
            attributes[forms[0]] = forms[1:]
            kinds[forms[0]] = kind[0] if kind else "other"
        else:
            objects[forms[0]] = forms[1:]
    return Vocabulary.build(attributes, objects, kinds, source=str(path))


def imagenet_classnames() -> list[str]:
    """open_clip's IMAGENET_CLASSNAMES, read with ast from its source file.

    Importing open_clip (even open_clip.zero_shot_metadata, via the package __init__) loads torch;
    find_spec only locates the package without running it.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.origin:
        raise ImportError("open_clip is not installed: the builtin vocabulary needs its ImageNet class names")
    source = Path(spec.origin).with_name("zero_shot_metadata.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "IMAGENET_CLASSNAMES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ImportError("IMAGENET_CLASSNAMES not found in open_clip/zero_shot_metadata.py")


def load_vocabulary(spec: str) -> Vocabulary:
    """'builtin' | 'benchmark:/folder' | 'world:/path' | '/path/file.yaml|yml|txt' -> Vocabulary."""
    if spec == "builtin":
        return Vocabulary.builtin()
    if spec.startswith("benchmark:"):
        return Vocabulary.from_benchmark(spec[len("benchmark:"):])
    if spec.startswith("world:"):
        return Vocabulary.from_world(spec[len("world:"):])
    if Path(spec).suffix.lower() in (".yaml", ".yml", ".txt"):
        return Vocabulary.from_file(spec)
    raise ValueError(f"unknown vocabulary {spec!r}: use builtin, benchmark:DIR, world:PATH or a .yaml/.txt file")


def vocabulary_checksum(spec: str | None) -> str | None:
    """A vocabulary by content (canonical names and surface forms), not by path: equal for two specs
    that label captions alike. None for no vocabulary."""
    if not spec:
        return None
    vocab = load_vocabulary(spec)
    content = [sorted(vocab.attribute_forms.items()), sorted(vocab.object_forms.items())]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]
