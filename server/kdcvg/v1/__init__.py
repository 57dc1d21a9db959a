"""Generated from protos/kdcvg/v1 by scripts/gen_protos.py; do not edit."""
