"""Install, remove and inspect the libvirt qemu hook (`hooks/qemu`) in a hooks directory.

The installed copy is `DIR/qemu.d/rarp-announce` (libvirt >= 6.5 runs every executable there)
with its settings written into the script itself: libvirt runs hooks with a minimal
environment and no PATH worth the name, and reading a config file would cost the hook startup
time, so the interpreter path, the mode and the control socket are literals in the file. The
installer only ever replaces or removes a file that carries the hook's marker line.
"""

from __future__ import annotations

import ast
import os
import stat
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rarp_announce.config import (
    DEFAULT_CONTROL_SOCKET,
    HANDOFF_TIMEOUT_MAX,
    HOOK_MODES,
    WAITER_TIMEOUT_MAX,
    HookConfig,
    hook_timeout,
)
from rarp_announce.control import MAX_REQUEST
from rarp_announce.errors import AnnounceError, InputError

HOOK_NAME = "rarp-announce"
MARKER = "# rarp-announce-hook:"
_BEGIN = "# --- settings:"
_END = "# --- end of settings ---"


@dataclass(frozen=True)
class HookSettings:
    """What the installed hook knows without reading anything at run time."""

    mode: str = HookConfig.mode
    control_socket: str = DEFAULT_CONTROL_SOCKET
    handoff_timeout: float = HookConfig.handoff_timeout
    waiter_timeout: float = HookConfig.waiter_timeout
    log_file: str = HookConfig.log_file
    waiter_dir: str = HookConfig.waiter_dir
    python: str = ""
    config: str = ""
    connect: str = ""
    created: tuple[str, ...] = ()
    max_request: int = MAX_REQUEST  # the daemon's bound, copied so the hook never sends more

    def check(self) -> None:
        """InputError naming the setting and what it expects."""
        if self.mode not in HOOK_MODES:
            raise InputError(f"invalid --mode {self.mode!r}: expected one of {', '.join(HOOK_MODES)}")
        for option, value, optional in (
            ("--control-socket", self.control_socket, False),
            ("--log-file", self.log_file, True),
            ("--waiter-dir", self.waiter_dir, False),
            ("--python", self.python, True),
            ("--config", self.config, True),
        ):
            if optional and not value:
                continue
            if not value.startswith("/") or any(ch in value for ch in "\n\r\0"):
                raise InputError(f"invalid {option} {value!r}: expected an absolute path")
        if any(ch in self.connect for ch in "\n\r\0") or self.connect.startswith("-"):
            raise InputError(f"invalid --connect {self.connect!r}: expected a libvirt URI such as qemu:///system")
        hook_timeout(self.handoff_timeout, "invalid hand-off timeout ([hook] handoff_timeout)", HANDOFF_TIMEOUT_MAX)
        hook_timeout(self.waiter_timeout, "invalid --waiter-timeout", WAITER_TIMEOUT_MAX)


_VARIABLES = {
    "mode": "MODE",
    "control_socket": "CONTROL_SOCKET",
    "handoff_timeout": "HANDOFF_TIMEOUT",
    "waiter_timeout": "WAITER_TIMEOUT",
    "log_file": "LOG_FILE",
    "waiter_dir": "WAITER_DIR",
    "python": "PYTHON",
    "config": "CONFIG",
    "connect": "CONNECT",
    "created": "CREATED",
    "max_request": "MAX_REQUEST",
}


@dataclass(frozen=True)
class InstallResult:
    path: str
    changed: bool  # False: the same hook with the same settings was already there
    new: bool  # the file did not exist: libvirtd only sees it after a restart
    created: tuple[str, ...] = ()


@dataclass(frozen=True)
class HookStatus:
    hooks_dir: str
    installed: bool
    path: str | None = None
    settings: HookSettings | None = None
    up_to_date: bool = False  # the installed script is the current hooks/qemu
    problems: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # hooks of someone else libvirt also runs

    def record(self) -> dict[str, object]:
        return {
            "hooks_dir": self.hooks_dir,
            "installed": self.installed,
            "path": self.path,
            "settings": asdict(self.settings) if self.settings else None,
            "up_to_date": self.up_to_date,
            "problems": self.problems,
            "others": self.others,
        }


def template_path() -> Path:
    """The hook script shipped with this installation.

    The repository keeps it at the top level (hooks/qemu); pyproject.toml maps that folder to
    the package `rarp_announce._hook`, so a wheel carries it and an editable install finds it.
    """
    from importlib.util import find_spec

    spec = find_spec("rarp_announce._hook")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "qemu"
        if candidate.is_file():
            return candidate
    return Path(__file__).resolve().parents[2] / "hooks" / "qemu"


def template() -> str:
    path = template_path()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AnnounceError(f"cannot read the hook template {path}: {exc.strerror}: reinstall rarp-announce") from None


def default_python() -> str:
    """This installation's interpreter, as invoked (a venv's bin/python must stay a symlink path)."""
    return os.path.abspath(sys.executable)


def hook_interpreter() -> str:
    """The interpreter on the hook's #! line: the real binary, so the kernel needs no venv."""
    return os.path.realpath(sys.executable)


def render(settings: HookSettings, source: str | None = None, interpreter: str | None = None) -> str:
    """The hook script with `settings` written into its settings block and its #! line."""
    settings.check()
    text = source if source is not None else template()
    lines = text.splitlines(keepends=True)
    try:
        begin = next(i for i, line in enumerate(lines) if line.startswith(_BEGIN))
        end = next(i for i, line in enumerate(lines) if line.startswith(_END))
    except StopIteration:
        raise AnnounceError("the hook template has no settings block: is hooks/qemu intact?") from None
    interpreter = interpreter or hook_interpreter()
    if len(interpreter) > 200 or " " in interpreter:
        raise InputError(f"interpreter path {interpreter!r} cannot go on a #! line (spaces or too long)")
    block = [lines[begin]]
    for attribute, variable in _VARIABLES.items():
        value = getattr(settings, attribute)
        block.append(f"{variable} = {value!r}\n")
    block.append(lines[end])
    head = f"#!{interpreter} -IS\n"
    return head + "".join(lines[1:begin] + block + lines[end + 1 :])


def parse_settings(text: str) -> HookSettings:
    """The settings written in an installed hook; InputError when the block is unreadable."""
    values: dict[str, object] = {}
    names = {variable: attribute for attribute, variable in _VARIABLES.items()}
    lines = text.splitlines()
    try:
        begin = next(i for i, line in enumerate(lines) if line.startswith(_BEGIN))
        end = next(i for i, line in enumerate(lines) if line.startswith(_END))
        block = ast.parse("\n".join(lines[begin + 1 : end]))
    except (StopIteration, SyntaxError, ValueError):
        raise InputError("the hook's settings block is missing or unreadable: run `hook install` again") from None
    for node in block.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        attribute = names.get(node.targets[0].id)
        if attribute is None:
            continue
        try:
            values[attribute] = ast.literal_eval(node.value)
        except ValueError:
            raise InputError(f"hook setting {node.targets[0].id} is not a literal value") from None
    defaults = {f.name: f.default for f in fields(HookSettings)}
    for attribute, value in values.items():
        expected = type(defaults[attribute])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, expected) or (isinstance(value, tuple) and not all(isinstance(v, str) for v in value)):
            raise InputError(f"hook setting {_VARIABLES[attribute]} has the wrong type: {value!r}")
        values[attribute] = value
    return HookSettings(**values)  # type: ignore[arg-type]


def is_ours(path: Path) -> bool:
    """True when `path` is a regular file that carries the hook's marker line."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return any(line.startswith(MARKER) for line in head.splitlines()[:3])


def install(hooks_dir: str, settings: HookSettings, *, single_script: bool = False) -> InstallResult:
    """Write the hook into `hooks_dir`; idempotent; refuses to replace anything not ours.

    `single_script` installs as `DIR/qemu` for libvirt older than 6.5, which runs only that file.
    """
    settings.check()
    template()  # fail before touching the hooks directory
    for problem in _file_problems(settings):
        raise InputError(problem)  # the hook would refuse it at every migration: say so now
    base = Path(hooks_dir)
    if base.exists() and not base.is_dir():
        raise InputError(f"--hooks-dir {hooks_dir} exists and is not a directory")
    main = base / "qemu"
    target = main if single_script else base / "qemu.d" / HOOK_NAME
    if single_script:
        if (main.exists() or main.is_symlink()) and not is_ours(main):
            raise AnnounceError(
                f"{main} exists and is not rarp-announce's hook: refusing to replace it; "
                f"install into {base / 'qemu.d'} instead (drop --single-script, needs libvirt >= 6.5)"
            )
        if is_ours(base / "qemu.d" / HOOK_NAME):
            raise AnnounceError(f"the hook is already installed as {base / 'qemu.d' / HOOK_NAME}: run `hook uninstall` first")
    else:
        if is_ours(main):
            raise AnnounceError(
                f"{main} is already a copy of rarp-announce's hook: libvirt would run it twice; "
                "remove it (`hook uninstall --hooks-dir ...` removes both) and install again"
            )
        if (target.exists() or target.is_symlink()) and not is_ours(target):
            raise AnnounceError(f"{target} exists and is not rarp-announce's hook: refusing to replace it; move it away first")
    created: list[str] = []
    previous: HookSettings | None = None
    if is_ours(target):
        try:
            previous = parse_settings(target.read_text(encoding="utf-8"))
        except InputError:
            previous = None
    missing = [d for d in (*reversed(base.absolute().parents), base, target.parent) if not d.exists()]
    for directory in dict.fromkeys(missing):
        if not directory.exists():
            try:
                directory.mkdir(mode=0o755)
            except OSError as exc:
                raise AnnounceError(f"cannot create {directory}: {exc.strerror}") from None
            created.append(str(directory))
    kept = previous.created if previous else ()
    settings = _replace(settings, created=tuple(dict.fromkeys([*kept, *created])))
    text = render(settings)
    new = not target.exists()
    if not new:
        try:
            if target.read_text(encoding="utf-8") == text and os.access(target, os.X_OK):
                return InstallResult(str(target), changed=False, new=False, created=tuple(created))
        except OSError:
            pass
    _write_atomically(target, text)
    return InstallResult(str(target), changed=True, new=new, created=tuple(created))


def uninstall(hooks_dir: str) -> list[str]:
    """Remove the hook (both places) and the directories the installer made, if empty."""
    base = Path(hooks_dir)
    removed: list[str] = []
    created: list[str] = []
    for path in (base / "qemu.d" / HOOK_NAME, base / "qemu"):
        if not is_ours(path):
            continue
        try:
            created.extend(parse_settings(path.read_text(encoding="utf-8")).created)
        except (InputError, OSError):
            pass
        try:
            path.unlink()
        except OSError as exc:
            raise AnnounceError(f"cannot remove {path}: {exc.strerror}") from None
        removed.append(str(path))
    # Deepest first: qemu.d before the hooks directory that holds it.
    for directory in sorted(set(created), key=len, reverse=True):
        try:
            os.rmdir(directory)
            removed.append(directory)
        except OSError:
            pass  # not empty (someone else's hooks) or already gone: leave it
    return removed


def status(hooks_dir: str) -> HookStatus:
    base = Path(hooks_dir)
    others: list[str] = []
    main = base / "qemu"
    if main.exists() and not is_ours(main):
        others.append(str(main))
    directory = base / "qemu.d"
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if entry.name != HOOK_NAME and not entry.name.endswith("~") and os.access(entry, os.X_OK):
                others.append(str(entry))
    for path in (base / "qemu.d" / HOOK_NAME, main):
        if not is_ours(path):
            continue
        problems: list[str] = []
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            settings: HookSettings | None = parse_settings(text)
        except InputError as exc:
            settings = None
            problems.append(str(exc))
        if not os.access(path, os.X_OK):
            problems.append(f"{path} is not executable: libvirt skips it (run `hook install` again)")
        up_to_date = False
        if settings is not None:
            if settings.python and not os.access(settings.python, os.X_OK):
                problems.append(f"the waiter's Python {settings.python} is missing: run `hook install` again")
            interpreter = text.split("\n", 1)[0][2:].split(" ")[0]
            if not os.access(interpreter, os.X_OK):
                problems.append(f"the hook's interpreter {interpreter} is missing: run `hook install` again")
            try:
                up_to_date = render(settings, interpreter=interpreter) == text
            except AnnounceError:
                up_to_date = False
            problems.extend(_file_problems(settings))
        return HookStatus(hooks_dir, True, str(path), settings, up_to_date, problems, others)
    return HookStatus(hooks_dir, False, others=others)


def _file_problems(settings: HookSettings) -> list[str]:
    """What the hook would refuse in its waiter_dir and log_file as they are now (hookfiles.py)."""
    from rarp_announce.triggers.hookfiles import log_file_problem, waiter_dir_problem

    found = [waiter_dir_problem(settings.waiter_dir)]
    if settings.log_file:
        found.append(log_file_problem(settings.log_file))
    return [problem for problem in found if problem is not None]


def _replace(settings: HookSettings, **changes: object) -> HookSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def _write_atomically(target: Path, text: str) -> None:
    # libvirt skips names ending in "~", so a half-written temporary file is never run.
    temporary = target.with_name(f".{target.name}.tmp~")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise AnnounceError(f"cannot write {target}: {exc.strerror}") from None
