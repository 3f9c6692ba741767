"""The trees whose code a benchmark runs, before and after: this checkout, and with
`--baseline REV` that revision, checked out into a temporary git worktree (bench/ingest.py,
bench/drain.py, bench/api.py).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess  # nosec B404 # runs git, by fixed argument lists
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txstream.processes import ROOT  # noqa: E402

AFTER = "after"  # the current tree's label when there is a baseline


def git(*args: str) -> str:
    """Run git in this repository; its output, or exit with git's own message."""
    # bandit B603: git from PATH, as the developer runs it
    command = ["git", "-C", str(ROOT), *args]
    done = subprocess.run(command, capture_output=True, text=True)  # nosec B603
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkouts(baseline: str | None) -> Iterator[dict[str, Path]]:
    """The trees whose scripts to run, by label: this one, and `baseline`'s if given.

    Without a baseline: {"": this tree}. With one: {"before (REV)": REV checked out,
    detached, in a temporary git worktree; "after": this tree}. The worktree is removed
    on the way out, also after Ctrl-C or a failed run.
    """
    if not baseline:
        yield {"": ROOT}
        return
    rev = git("rev-parse", "--short", "--verify", f"{baseline}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix=f"txstream-{rev}-"))
    tree = tmp / "tree"
    try:
        git("worktree", "add", "--detach", "--quiet", str(tree), rev)
        yield {f"before ({rev})": tree, AFTER: ROOT}
    finally:
        if tree.exists():
            git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
