"""The tiny end-to-end demo (`python -m tempnet.demo`): see `tempnet.demo.run`."""
