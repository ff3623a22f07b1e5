"""tools/diagnostics/measure_recall_by_size.py: best IoU of the proposals / detections per object, by COCO
size range, in original image pixels."""
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, ImageList, Instances

from conftest import load_tool

CONFIG = "configs/shapes/rs_faster_rcnn_R_18_FPN_quick.yaml"


def test_summarize_hand_made_objects():
    tool = load_tool("measure_recall_by_size")
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0],       # small (area 100)
                       [0.0, 0.0, 20.0, 20.0],       # small (400)
                       [0.0, 0.0, 50.0, 50.0],       # medium (2500)
                       [0.0, 0.0, 100.0, 100.0]])    # large (10000)
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # small one exactly: IoU 1
                              [0.0, 0.0, 20.0, 12.0],     # second small: IoU 240 / 400 = 0.6
                              [0.0, 0.0, 50.0, 40.0]])    # medium: IoU 2000 / 2500 = 0.8
    prop = tool.best_ious(gt, proposals)
    assert torch.allclose(prop, torch.tensor([1.0, 0.6, 0.8, 0.2]))  # large: 2000 / 10000
    det = tool.best_ious(gt, torch.empty(0, 4))
    assert det.tolist() == [0.0] * 4
    s = tool.summarize(Boxes(gt).area(), prop, det)
    assert list(s) == ["small", "medium", "large"]
    assert s["small"]["n"] == 2 and abs(s["small"]["proposal_iou"] - 0.8) < 1e-6
    assert s["small"]["proposal_r50"] == 1.0 and s["small"]["proposal_r70"] == 0.5
    assert s["medium"]["proposal_r70"] == 1.0 and s["large"]["proposal_r50"] == 0.0
    assert s["large"]["detection_iou"] == 0.0 and s["large"]["detection_r75"] == 0.0
    assert "| small | 2 | 0.800 | 1.000 | 0.500 |" in tool.format_table("x", s)


class _StubRCNN:
    """Proposals = the GT boxes in the resized image; the box head's results = the same boxes
    narrowed to 60 % of their width around their centre (IoU with its own object 0.6; inside
    the image, so clipping leaves them alone), brought back to the original image by
    Detectron2's own post-processing."""

    _postprocess = staticmethod(GeneralizedRCNN._postprocess)

    def __init__(self, records, tool):
        self.records, self.tool = records, tool

    def eval(self):
        return self

    def preprocess_image(self, batch):
        self.batch = batch
        return ImageList.from_tensors([x["image"].float() for x in batch])

    def backbone(self, tensor):
        return {}

    def proposal_generator(self, images, features, targets):
        out = []
        for x, (h, w) in zip(self.batch, images.image_sizes):
            rec = self.records[x["image_id"]]
            gt = self.tool.gt_boxes_of(rec) * torch.tensor([w / rec["width"], h / rec["height"]] * 2)
            inst = Instances((h, w))
            inst.proposal_boxes = Boxes(gt)
            out.append(inst)
        return out, {}

    def roi_heads(self, images, features, proposals, targets):
        out = []
        for p in proposals:
            boxes = p.proposal_boxes.tensor
            cut = (boxes[:, 2] - boxes[:, 0]) * 0.2  # 60 % of the width, same centre: IoU 0.6
            inst = Instances(p.image_size)
            inst.pred_boxes = Boxes(boxes + torch.stack([cut, 0 * cut, -cut, 0 * cut], 1))
            out.append(inst)
        return out, {}


def test_collect_compares_in_original_pixels(shapes_root, monkeypatch):
    """The test loader resizes the 256 px images to 192 px: proposals placed exactly on the
    resized GT boxes must come back at IoU 1, the narrowed detections at 0.6."""
    monkeypatch.setenv("DETECTRON2_DATASETS", shapes_root)
    tool = load_tool("measure_recall_by_size")
    from rsloss_d2 import engine as train_net

    cfg = train_net.build_cfg(train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "DATALOADER.NUM_WORKERS", "0"]))
    assert cfg.INPUT.MIN_SIZE_TEST != 256  # the check below needs a real resize
    records = {r["image_id"]: r for r in DatasetCatalog.get(cfg.DATASETS.TEST[0])}
    areas, prop, det = tool.collect(_StubRCNN(records, tool), cfg)
    n = sum(len(tool.gt_boxes_of(r)) for r in records.values())
    assert len(areas) == len(prop) == len(det) == n > 0
    assert torch.allclose(prop, torch.ones(n), atol=1e-4)
    # its own narrowed box gives each object 0.6; a neighbour's may overlap it better
    assert (det >= 0.6 - 1e-4).all() and ((det - 0.6).abs() < 1e-4).float().mean() > 0.9
    s = tool.summarize(areas, prop, det)
    assert sum(v["n"] for v in s.values()) == n
