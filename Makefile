# The two commands of the README, plus a few conveniences. Every target sets up .venv first.
.PHONY: setup test test-slow demo demo-scratch bench studio

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

test-slow:
	bash scripts/test.sh -m slow

demo:
	bash scripts/demo.sh

demo-scratch:
	bash scripts/demo.sh --from-scratch

studio:
	bash scripts/setup.sh
	.venv/bin/python -m cogvideo_lite.studio --ckpt checkpoints/shapes-tiny
