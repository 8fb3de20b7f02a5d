"""``python -m lightning_meta.upgrade OLD.ckpt NEW.ckpt``: rewrite a pre-InnerLoop checkpoint into the current form.

See :func:`lightning_meta.checkpoint.upgrade_checkpoint`.
"""

from __future__ import annotations

import sys

from lightning_meta.checkpoint import upgrade_checkpoint


def main(argv: list[str] | None = None) -> None:
    """Run the upgrade on ``argv`` (default: the command line): ``OLD.ckpt NEW.ckpt``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m lightning_meta.upgrade OLD.ckpt NEW.ckpt")
    translated = upgrade_checkpoint(args[0], args[1])
    print(f"wrote {args[1]}" + (f"; translated {', '.join(translated)} into inner_loop" if translated else ""))


if __name__ == "__main__":
    main()
