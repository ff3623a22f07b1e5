"""Model components; importing the submodules registers them in Detectron2's registries."""
