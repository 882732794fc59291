"""The transfer-learning guide's CNN example with hftl: freeze everything, put a new `fc` on top,
unfreeze `layer4` at a small lr, and keep the frozen stages' BatchNorm statistics.

    python examples/resnet_guide.py

The network is a torchvision-style ResNet (conv1/bn1, layer1-4 of residual blocks, fc), written
out here so the example needs nothing but torch; with torchvision, `resnet18(weights=...)` has the
same parameter names and the same rule groups it. hftl cannot group a plain `nn.Module` by
itself, so the rule names the groups, from the input side to the head.
"""

from __future__ import annotations

import torch
from torch import nn

import hftl

RESNET_GROUPS = {  # group -> regex over parameter names, input side first, the head last
    "stem": r"^(conv1|bn1)\.",
    "layer1": r"^layer1\.",
    "layer2": r"^layer2\.",
    "layer3": r"^layer3\.",
    "layer4": r"^layer4\.",
    "head": r"^fc\.",
}


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + skip)


class ResNet(nn.Module):
    """ResNet-style: a stem, four stages of one block each, global pooling, a linear classifier."""

    def __init__(self, width: int = 8, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [width, width, 2 * width, 4 * width, 8 * width]
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(Block(widths[i - 1], widths[i], 1 if i == 1 else 2)))
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


def main(steps: int = 20, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = ResNet()  # stands in for a pre-trained network
    model.fc = nn.Linear(model.fc.in_features, 4)  # the new head, for 4 classes
    plan = hftl.TransferPlan.build(model, groups=RESNET_GROUPS, strategy="partial", unfrozen_groups=1,
                                   learning_rate=1e-4, head_lr=1e-2, weight_decay=1e-4)
    plan.apply()  # stem and layer1-3 frozen, in eval mode: their BatchNorm statistics stay as pre-trained
    print(plan.table())
    optimizer = plan.optimizer(torch.optim.SGD, momentum=0.9)
    images, labels = torch.randn(64, 3, 16, 16), torch.randint(0, 4, (64,))
    model.train()  # frozen modules stay in eval mode all the same
    for step in range(steps):
        batch = slice(16 * (step % 4), 16 * (step % 4) + 16)
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {"plan": plan, "model": model, "optimizer": optimizer}


if __name__ == "__main__":
    main()
