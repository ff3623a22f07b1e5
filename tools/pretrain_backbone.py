"""Make (or check) the shapes-pretrained ResNet-18 (GN) backbone, `rsloss_d2://ShapesPretrained/R-18-GN.pkl`.

    python tools/pretrain_backbone.py            # make it if it is not cached yet
    python tools/pretrain_backbone.py --force    # remake it

Thin entry point over :func:`rsloss_d2.pretrained.main` (the file is also made on first use of
the URL in ``MODEL.WEIGHTS``).
"""
from rsloss_d2.pretrained import main

if __name__ == "__main__":
    main()
