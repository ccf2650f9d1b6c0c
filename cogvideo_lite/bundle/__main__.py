from cogvideo_lite.bundle.make import main

main()
