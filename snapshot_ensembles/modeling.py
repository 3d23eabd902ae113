"""Building the networks of models/ from the scripts' flags (shared by training and prediction)."""

from snapshot_ensembles.naming import DATASETS, model_prefix

INPUT_SHAPE = (32, 32, 3)
DEFAULT_BATCH_SIZE = {"wrn": 128, "dn": 64}
DEFAULT_DROPOUT = {"wrn": 0.0, "dn": 0.2}


def prefix_for(dataset, args):
    return model_prefix(dataset, args.model, args.wrn_N, args.wrn_k, args.dn_depth, args.dn_growth_rate)


def describe_architecture(args):
    """The model flags that determine the weight shapes, as the user would type them."""
    if args.model == "wrn":
        return f"--model wrn --wrn_N {args.wrn_N} --wrn_k {args.wrn_k}"
    return f"--model dn --dn_depth {args.dn_depth} --dn_growth_rate {args.dn_growth_rate} --dn_blocks {args.dn_blocks}"


def build_model(args, nb_classes, dropout=None, input_shape=INPUT_SHAPE, verbose=0):
    from models import create_dense_net, create_wide_residual_network

    if dropout is None:
        dropout = DEFAULT_DROPOUT[args.model]
    if args.model == "wrn":
        return create_wide_residual_network(input_shape, nb_classes=nb_classes, N=args.wrn_N, k=args.wrn_k,
                                            dropout=dropout, verbose=verbose)
    return create_dense_net(nb_classes, input_shape, depth=args.dn_depth, nb_dense_block=args.dn_blocks,
                            growth_rate=args.dn_growth_rate, dropout_rate=dropout or None, verbose=verbose)


def nb_classes_of(dataset):
    return DATASETS[dataset][1]
