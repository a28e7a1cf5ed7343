"""Compile: an ArchGraph -> ArchNet. Each node's ops build their own modules; this file only
assembles them, so adding an op never touches it."""

from __future__ import annotations

import torch
from torch import nn

from archdsl.graph import ArchGraph, Node
from archdsl.network import ArchNet, Block, Interaction, LayerScale, Mixer, Stage
from archdsl.norms import make_norm


def _build_block(node: Node, drop_path: float) -> Block:
    plan = node.block
    width = node.in_shape.channels
    mixer = Mixer(
        candidates=[placed.op.build(placed.site) for placed in plan.candidates],
        fusion=plan.fusion.op.build(plan.fusion.site),
        interactions=[Interaction(p.op.build(p.site), p.op.source, p.op.target, p.op.applies_to) for p in plan.interactions],
        order=plan.order,
        emits=[p.op.emits for p in plan.candidates],
        consumes=[p.op.consumes for p in plan.candidates],
        pad_multiple=plan.pad_multiple,
    )
    ffn = plan.ffn.op.build(plan.ffn.site) if plan.ffn else None
    whole_block = plan.residual == "whole_block"

    def layer_scale(branch_runs: bool) -> LayerScale | None:
        return LayerScale(width, plan.layer_scale) if branch_runs and plan.layer_scale is not None else None

    return Block(
        None if whole_block else make_norm(plan.norm, width),
        mixer,
        make_norm(plan.norm, width) if ffn else None,
        ffn,
        drop_path,
        whole_block,
        layer_scale(not whole_block),  # "whole_block" has one branch, scaled after its FFN
        layer_scale(ffn is not None),
    )


def build_node(node: Node, drop_path: float = 0.0) -> nn.Module:
    if node.kind == "block":
        return _build_block(node, drop_path)
    return node.op.op.build(node.op.site)


def compile_graph(graph: ArchGraph) -> ArchNet:
    spec = graph.spec
    blocks = [node for node in graph.nodes() if node.kind == "block"]
    # on the CPU even under `with torch.device("meta")`, so a whole network can be built there
    rates = torch.linspace(0, spec.drop_path_rate, len(blocks), device="cpu").tolist() if blocks else []
    rate_of = {node.name: rate for node, rate in zip(blocks, rates)}
    stages = []
    for stage_index in range(graph.num_stages):
        nodes = graph.stage_nodes(stage_index)
        downsample = next((build_node(n) for n in nodes if n.kind == "downsample"), None)
        stages.append(Stage(downsample, [build_node(n, rate_of[n.name]) for n in nodes if n.kind == "block"]))
    return ArchNet(build_node(graph.node("stem")), stages, build_node(graph.node("head")), spec=spec)
