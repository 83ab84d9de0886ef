"""mlxsmall chat: a multi-turn REPL."""

import argparse
import sys

from ._common import (
    add_image_argument, add_model_argument, add_sampling_arguments, load_for_run, positive_int, sampling_kwargs,
    vision_language_route,
)

EPILOG = """\
in the chat:
  /reset   forget the conversation      /quit   leave (or Ctrl-D)
  Ctrl-C   stop the current answer (the chat goes on)

examples:
  mlxsmall chat                          # offline default model
  mlxsmall chat mobillama-q4             # downloads, converts, quantizes, caches once
  mlxsmall chat ./my-model --system "You are terse." --temp 0.7
  mlxsmall chat ./my-vlm --image photo.jpg   # vision-language model: the image encoded once
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "chat", help="chat with a model in the terminal",
        description="Multi-turn chat with the model's chat template.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--template", choices=["tokenizer", "plain"], default=None,
                        help="prompt format (default: the model's chat template, or a plain "
                        "User:/Assistant: transcript for models without one)")
    parser.add_argument("--context", type=positive_int, default=None,
                        help="context length in tokens (default: the model's max_position_embeddings)")
    add_image_argument(parser)
    add_sampling_arguments(parser)
    parser.set_defaults(func=run, max_tokens=512)


def run(args):
    vision = vision_language_route(args)  # checks the model and images before anything loads
    from ..chat import ChatSession
    from ..loading import read_config, stop_strings

    if vision:
        from ..images import load_image

        images = [load_image(source) for source in args.image]  # a bad image fails before the model loads
    model, tokenizer, path = load_for_run(args)
    config = read_config(path)
    context = args.context or config.get("text_config", config).get("max_position_embeddings") or 2048
    options = dict(context_length=context, max_tokens=min(args.max_tokens, context // 2), system=args.system,
                   template=None if args.template == "tokenizer" else args.template,
                   stop=stop_strings(path) + args.stop)
    images_prefix = ""  # the images' placeholders, put before the first message of a conversation
    if vision:
        session, images_prefix = vision_session(model, tokenizer, images, options)
    else:
        session = ChatSession(model, tokenizer, **options)
    print(f"chatting with {path.name} ({session.template_name} template). /reset, /quit, Ctrl-C stops an answer.")
    prefix = images_prefix
    while True:
        try:
            text = input(">> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        command = text.strip()
        if not command:
            continue
        if command in ("/quit", "/exit"):
            return 0
        if command == "/reset":
            session.reset()
            prefix = images_prefix
            print("[conversation cleared]")
            continue
        try:
            for step in session.send(prefix + text, **sampling_kwargs(args)):
                sys.stdout.write(step.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n[answer stopped]")
            continue
        finally:
            prefix = ""
        for notice in session.notices:
            print(f"\n[{notice}]", file=sys.stderr)
        print()


def vision_session(model, tokenizer, images, options):
    """A chat about ``images``, encoded once: ``(session, placeholders for the first message)``."""
    from ..images import image_processor_for
    from ..vlm import IMAGE_PLACEHOLDER, encode_images, vision_chat_session

    features = None
    if images:
        features, seconds = encode_images(model, image_processor_for(model.vision_config), images)
        print(f"[{len(images)} image(s) encoded in {seconds * 1000:.0f} ms, "
              f"{model.num_image_tokens * len(images)} image tokens]", file=sys.stderr)
    return vision_chat_session(model, tokenizer, features, **options), (IMAGE_PLACEHOLDER + "\n") * len(images)
