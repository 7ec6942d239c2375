"""The house keeps its shape: floors, module and function sizes, the README's examples, the wheel."""
import ast
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

SOURCE_DIRS = ("gallery", "generate", "search")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources():
    yield ROOT / "cli.py"
    for folder in SOURCE_DIRS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_the_import_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")


@pytest.mark.parametrize("module, banned", [
    ("gallery.store", ("flask", "torch")), ("gallery.recipe", ("flask", "torch")),
    ("gallery.instance", ("flask", "torch")), ("gallery.imaging", ("flask", "torch")),
    ("cli", ("torch", "flask", "ray", "open_clip")),
])
def test_importing_a_module_loads_only_its_floor(module, banned):
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.split('.')[0] in {banned!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"importing {module} loaded {result.stdout.split()[:5]}"


def test_modules_and_functions_stay_small():
    too_long = []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert too_long == []


def _readme_commands():
    """Every clip-curator command line in the README's shell code blocks, as argument lists."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|\|\|", line):
                words = shlex.split(part.strip())
                for i, word in enumerate(words):
                    if word == "cli.py" or word.endswith("/cli.py") or word == "clip-curator":
                        yield part.strip(), words[i + 1:]
                        break


def test_every_readme_example_names_a_real_command_and_real_options():
    from cli import main

    seen = 0
    for line, args in _readme_commands():
        seen += 1
        group_opts = {"--instance", "-h", "--help", "--version"}
        while args and args[0] in group_opts:
            args = args[2:] if args[0] == "--instance" else args[1:]
        if not args:
            continue
        assert args[0] in main.commands, line
        command = main.commands[args[0]]
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        for word in args[1:]:
            if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
                assert word.split("=")[0] in options, f"{line}: {word} is not an option of {args[0]}"
    assert seen >= 20


def test_every_command_is_in_the_readme():
    from cli import main

    named = {args[0] for _, args in _readme_commands() if args}
    assert set(main.commands) - named == set()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("clip_curator-*.whl"))


def test_the_wheel_carries_templates_static_files_and_tiny_weights(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("cli.py", "gallery/web/templates/base.html", "gallery/web/templates/browse/grid.html",
                     "gallery/web/static/app.js", "gallery/web/static/style.css", "generate/tiny/tiny-unet.pt",
                     "generate/tiny/tiny-clip.pt", "generate/tiny/tiny-clip.json", "gallery/store/schema.py"):
        assert required in names, required
    assert not any(n.startswith(("tests/", "instance/", "bench/")) for n in names)


@pytest.mark.slow
def test_the_installed_command_works_from_any_folder(wheel, tmp_path):
    # Installed apart from the checkout (its dependencies come from this environment), run from a
    # folder of its own: the instance is that folder's ./instance, never the package's folder.
    target, work = tmp_path / "site", tmp_path / "somewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "CLIP_CURATOR_OFFLINE": "1"}
    env.pop("CLIP_CURATOR_INSTANCE", None)
    exe = [str(target / "bin" / "clip-curator")]
    helped = subprocess.run(exe + ["--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "generate" in helped.stdout, helped.stderr
    where = subprocess.run([sys.executable, "-c", "import gallery; print(gallery.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(target)), where.stdout
    job = subprocess.run(exe + ["generate", "--model", "tiny", "-p", "a red circle", "--steps", "3", "--seed", "1"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert len(list((work / "instance" / "images").rglob("*.png"))) == 1
    assert (work / "instance" / "gallery.db").is_file() and not (target / "instance").exists()
