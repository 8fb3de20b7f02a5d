"""The class splits of the standard few-shot benchmarks, shipped with the package (no images).

Transcribed from the public split files (``../shared/data/splits`` in this project; the tests check every list
against them): Ravi & Larochelle's mini-ImageNet CSVs, torchmeta's CIFAR-FS, FC100 and CUB JSON files, and
easyfsl's tieredImageNet JSON files. Each list keeps the order of its source file, which is the order of the labels
the adapters assign.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: mini-ImageNet WordNet ids per split (Ravi & Larochelle CSVs, first-appearance order): 64/16/20.
MINI_IMAGENET_CLASSES: dict[str, tuple[str, ...]] = {
    "train": _words(
        """
        n01532829 n01558993 n01704323 n01749939 n01770081 n01843383 n01910747 n02074367 n02089867 n02091831 n02101006
        n02105505 n02108089 n02108551 n02108915 n02111277 n02113712 n02120079 n02165456 n02457408 n02606052 n02687172
        n02747177 n02795169 n02823428 n02966193 n03017168 n03047690 n03062245 n03207743 n03220513 n03337140 n03347037
        n03400231 n03476684 n03527444 n03676483 n03838899 n03854065 n03888605 n03908618 n03924679 n03998194 n04067472
        n04243546 n04251144 n04258138 n04275548 n04296562 n04389033 n04435653 n04443257 n04509417 n04515003 n04596742
        n04604644 n04612504 n06794110 n07584110 n07697537 n07747607 n09246464 n13054560 n13133613
        """
    ),
    "val": _words(
        """
        n01855672 n02091244 n02114548 n02138441 n02174001 n02950826 n02971356 n02981792 n03075370 n03417042 n03535780
        n03584254 n03770439 n03773504 n03980874 n09256479
        """
    ),
    "test": _words(
        """
        n01930112 n01981276 n02099601 n02110063 n02110341 n02116738 n02129165 n02219486 n02443484 n02871525 n03127925
        n03146219 n03272010 n03544143 n03775546 n04146614 n04149813 n04418357 n04522168 n07613480
        """
    ),
}

#: CIFAR-FS (Bertinetto et al., 2019) ``superclass:class`` per split (torchmeta's cifar_fs/*.json): 64/16/20.
CIFAR_FS_CLASSES: dict[str, tuple[str, ...]] = {
    "train": _words(
        """
        aquatic_mammals:dolphin aquatic_mammals:seal fish:aquarium_fish fish:ray fish:trout flowers:orchid
        flowers:sunflower flowers:tulip food_containers:bottle food_containers:bowl food_containers:can
        food_containers:cup food_containers:plate fruit_and_vegetables:apple fruit_and_vegetables:mushroom
        fruit_and_vegetables:orange fruit_and_vegetables:pear household_electrical_devices:clock
        household_electrical_devices:keyboard household_furniture:chair household_furniture:couch insects:bee
        insects:caterpillar insects:cockroach large_carnivores:bear large_carnivores:lion large_carnivores:tiger
        large_carnivores:wolf large_man-made_outdoor_things:bridge large_man-made_outdoor_things:castle
        large_man-made_outdoor_things:house large_man-made_outdoor_things:road large_man-made_outdoor_things:skyscraper
        large_natural_outdoor_scenes:cloud large_natural_outdoor_scenes:forest large_natural_outdoor_scenes:mountain
        large_omnivores_and_herbivores:elephant large_omnivores_and_herbivores:kangaroo medium_mammals:porcupine
        medium_mammals:possum medium_mammals:raccoon medium_mammals:skunk non-insect_invertebrates:lobster
        non-insect_invertebrates:spider people:boy people:girl reptiles:dinosaur reptiles:lizard reptiles:snake
        reptiles:turtle small_mammals:hamster small_mammals:mouse small_mammals:rabbit small_mammals:shrew
        small_mammals:squirrel trees:oak_tree trees:palm_tree trees:pine_tree trees:willow_tree vehicles_1:bus
        vehicles_1:train vehicles_2:lawn_mower vehicles_2:streetcar vehicles_2:tank
        """
    ),
    "val": _words(
        """
        aquatic_mammals:beaver aquatic_mammals:otter fish:flatfish fish:shark household_electrical_devices:lamp
        household_electrical_devices:television insects:beetle insects:butterfly large_natural_outdoor_scenes:sea
        large_omnivores_and_herbivores:camel large_omnivores_and_herbivores:cattle non-insect_invertebrates:crab
        reptiles:crocodile trees:maple_tree vehicles_1:motorcycle vehicles_2:tractor
        """
    ),
    "test": _words(
        """
        aquatic_mammals:whale flowers:poppy flowers:rose fruit_and_vegetables:sweet_pepper
        household_electrical_devices:telephone household_furniture:bed household_furniture:table
        household_furniture:wardrobe large_carnivores:leopard large_natural_outdoor_scenes:plain
        large_omnivores_and_herbivores:chimpanzee medium_mammals:fox non-insect_invertebrates:snail
        non-insect_invertebrates:worm people:baby people:man people:woman vehicles_1:bicycle vehicles_1:pickup_truck
        vehicles_2:rocket
        """
    ),
}

#: FC100 (Oreshkin et al., 2018) CIFAR-100 superclasses per split (torchmeta's fc100_superclasses/*.json): 12/4/4.
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": _words(
        """
        fish flowers food_containers fruit_and_vegetables household_electrical_devices household_furniture
        large_man-made_outdoor_things large_natural_outdoor_scenes reptiles trees vehicles_1 vehicles_2
        """
    ),
    "val": _words(
        """
        large_carnivores large_omnivores_and_herbivores non-insect_invertebrates small_mammals
        """
    ),
    "test": _words(
        """
        aquatic_mammals insects medium_mammals people
        """
    ),
}

#: FC100 fine classes per split, in label order (derived/fc100_classes.json): 60/20/20.
FC100_CLASSES: dict[str, tuple[str, ...]] = {
    "train": _words(
        """
        apple aquarium_fish bed bicycle bottle bowl bridge bus can castle chair clock cloud couch crocodile cup dinosaur
        flatfish forest house keyboard lamp lawn_mower lizard maple_tree motorcycle mountain mushroom oak_tree orange
        orchid palm_tree pear pickup_truck pine_tree plain plate poppy ray road rocket rose sea shark skyscraper snake
        streetcar sunflower sweet_pepper table tank telephone television tractor train trout tulip turtle wardrobe
        willow_tree
        """
    ),
    "val": _words(
        """
        bear camel cattle chimpanzee crab elephant hamster kangaroo leopard lion lobster mouse rabbit shrew snail spider
        squirrel tiger wolf worm
        """
    ),
    "test": _words(
        """
        baby beaver bee beetle boy butterfly caterpillar cockroach dolphin fox girl man otter porcupine possum raccoon
        seal skunk whale woman
        """
    ),
}

#: CUB-200-2011 few-shot split of Chen et al. (2019) (torchmeta's cub/*.json): 100/50/50 classes.
CUB_CLASSES: dict[str, tuple[str, ...]] = {
    "train": _words(
        """
        001.Black_footed_Albatross 003.Sooty_Albatross 005.Crested_Auklet 007.Parakeet_Auklet 009.Brewer_Blackbird
        011.Rusty_Blackbird 013.Bobolink 015.Lazuli_Bunting 017.Cardinal 019.Gray_Catbird 021.Eastern_Towhee
        023.Brandt_Cormorant 025.Pelagic_Cormorant 027.Shiny_Cowbird 029.American_Crow 031.Black_billed_Cuckoo
        033.Yellow_billed_Cuckoo 035.Purple_Finch 037.Acadian_Flycatcher 039.Least_Flycatcher
        041.Scissor_tailed_Flycatcher 043.Yellow_bellied_Flycatcher 045.Northern_Fulmar 047.American_Goldfinch
        049.Boat_tailed_Grackle 051.Horned_Grebe 053.Western_Grebe 055.Evening_Grosbeak 057.Rose_breasted_Grosbeak
        059.California_Gull 061.Heermann_Gull 063.Ivory_Gull 065.Slaty_backed_Gull 067.Anna_Hummingbird
        069.Rufous_Hummingbird 071.Long_tailed_Jaeger 073.Blue_Jay 075.Green_Jay 077.Tropical_Kingbird
        079.Belted_Kingfisher 081.Pied_Kingfisher 083.White_breasted_Kingfisher 085.Horned_Lark 087.Mallard
        089.Hooded_Merganser 091.Mockingbird 093.Clark_Nutcracker 095.Baltimore_Oriole 097.Orchard_Oriole 099.Ovenbird
        101.White_Pelican 103.Sayornis 105.Whip_poor_Will 107.Common_Raven 109.American_Redstart 111.Loggerhead_Shrike
        113.Baird_Sparrow 115.Brewer_Sparrow 117.Clay_colored_Sparrow 119.Field_Sparrow 121.Grasshopper_Sparrow
        123.Henslow_Sparrow 125.Lincoln_Sparrow 127.Savannah_Sparrow 129.Song_Sparrow 131.Vesper_Sparrow
        133.White_throated_Sparrow 135.Bank_Swallow 137.Cliff_Swallow 139.Scarlet_Tanager 141.Artic_Tern
        143.Caspian_Tern 145.Elegant_Tern 147.Least_Tern 149.Brown_Thrasher 151.Black_capped_Vireo
        153.Philadelphia_Vireo 155.Warbling_Vireo 157.Yellow_throated_Vireo 159.Black_and_white_Warbler
        161.Blue_winged_Warbler 163.Cape_May_Warbler 165.Chestnut_sided_Warbler 167.Hooded_Warbler 169.Magnolia_Warbler
        171.Myrtle_Warbler 173.Orange_crowned_Warbler 175.Pine_Warbler 177.Prothonotary_Warbler 179.Tennessee_Warbler
        181.Worm_eating_Warbler 183.Northern_Waterthrush 185.Bohemian_Waxwing 187.American_Three_toed_Woodpecker
        189.Red_bellied_Woodpecker 191.Red_headed_Woodpecker 193.Bewick_Wren 195.Carolina_Wren 197.Marsh_Wren
        199.Winter_Wren
        """
    ),
    "val": _words(
        """
        002.Laysan_Albatross 006.Least_Auklet 010.Red_winged_Blackbird 014.Indigo_Bunting 018.Spotted_Catbird
        022.Chuck_will_Widow 026.Bronzed_Cowbird 030.Fish_Crow 034.Gray_crowned_Rosy_Finch 038.Great_Crested_Flycatcher
        042.Vermilion_Flycatcher 046.Gadwall 050.Eared_Grebe 054.Blue_Grosbeak 058.Pigeon_Guillemot 062.Herring_Gull
        066.Western_Gull 070.Green_Violetear 074.Florida_Jay 078.Gray_Kingbird 082.Ringed_Kingfisher 086.Pacific_Loon
        090.Red_breasted_Merganser 094.White_breasted_Nuthatch 098.Scott_Oriole 102.Western_Wood_Pewee 106.Horned_Puffin
        110.Geococcyx 114.Black_throated_Sparrow 118.House_Sparrow 122.Harris_Sparrow 126.Nelson_Sharp_tailed_Sparrow
        130.Tree_Sparrow 134.Cape_Glossy_Starling 138.Tree_Swallow 142.Black_Tern 146.Forsters_Tern 150.Sage_Thrasher
        154.Red_eyed_Vireo 158.Bay_breasted_Warbler 162.Canada_Warbler 166.Golden_winged_Warbler 170.Mourning_Warbler
        174.Palm_Warbler 178.Swainson_Warbler 182.Yellow_Warbler 186.Cedar_Waxwing 190.Red_cockaded_Woodpecker
        194.Cactus_Wren 198.Rock_Wren
        """
    ),
    "test": _words(
        """
        004.Groove_billed_Ani 008.Rhinoceros_Auklet 012.Yellow_headed_Blackbird 016.Painted_Bunting
        020.Yellow_breasted_Chat 024.Red_faced_Cormorant 028.Brown_Creeper 032.Mangrove_Cuckoo 036.Northern_Flicker
        040.Olive_sided_Flycatcher 044.Frigatebird 048.European_Goldfinch 052.Pied_billed_Grebe 056.Pine_Grosbeak
        060.Glaucous_winged_Gull 064.Ring_billed_Gull 068.Ruby_throated_Hummingbird 072.Pomarine_Jaeger
        076.Dark_eyed_Junco 080.Green_Kingfisher 084.Red_legged_Kittiwake 088.Western_Meadowlark 092.Nighthawk
        096.Hooded_Oriole 100.Brown_Pelican 104.American_Pipit 108.White_necked_Raven 112.Great_Grey_Shrike
        116.Chipping_Sparrow 120.Fox_Sparrow 124.Le_Conte_Sparrow 128.Seaside_Sparrow 132.White_crowned_Sparrow
        136.Barn_Swallow 140.Summer_Tanager 144.Common_Tern 148.Green_tailed_Towhee 152.Blue_headed_Vireo
        156.White_eyed_Vireo 160.Black_throated_Blue_Warbler 164.Cerulean_Warbler 168.Kentucky_Warbler
        172.Nashville_Warbler 176.Prairie_Warbler 180.Wilson_Warbler 184.Louisiana_Waterthrush 188.Pileated_Woodpecker
        192.Downy_Woodpecker 196.House_Wren 200.Common_Yellowthroat
        """
    ),
}

#: tieredImageNet (Ren et al., 2018) WordNet ids per split (easyfsl's tiered_imagenet/*.json): 351/97/160.
TIERED_IMAGENET_CLASSES: dict[str, tuple[str, ...]] = {
    "train": _words(
        """
        n01530575 n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01580077 n01582220 n01592084 n01601694
        n01675722 n01677366 n01682714 n01685808 n01687978 n01688243 n01689811 n01692333 n01693334 n01694178 n01695060
        n01728572 n01728920 n01729322 n01729977 n01734418 n01735189 n01737021 n01739381 n01740131 n01742172 n01744401
        n01748264 n01749939 n01751748 n01753488 n01755581 n01756291 n01847000 n01855032 n01855672 n01860187 n02002556
        n02002724 n02006656 n02007558 n02009229 n02009912 n02011460 n02012849 n02013706 n02017213 n02018207 n02018795
        n02025239 n02027492 n02028035 n02033041 n02037110 n02051845 n02056570 n02058221 n02088094 n02088238 n02088364
        n02088466 n02088632 n02089078 n02089867 n02089973 n02090379 n02090622 n02090721 n02091032 n02091134 n02091244
        n02091467 n02091635 n02091831 n02092002 n02092339 n02093256 n02093428 n02093647 n02093754 n02093859 n02093991
        n02094114 n02094258 n02094433 n02095314 n02095570 n02095889 n02096051 n02096177 n02096294 n02096437 n02096585
        n02097047 n02097130 n02097209 n02097298 n02097474 n02097658 n02098105 n02098286 n02098413 n02123045 n02123159
        n02123394 n02123597 n02124075 n02125311 n02127052 n02128385 n02128757 n02128925 n02129165 n02129604 n02130308
        n02389026 n02391049 n02395406 n02396427 n02397096 n02398521 n02403003 n02408429 n02410509 n02412080 n02415577
        n02417914 n02422106 n02422699 n02423022 n02437312 n02437616 n02480495 n02480855 n02481823 n02483362 n02483708
        n02484975 n02486261 n02486410 n02487347 n02488291 n02488702 n02489166 n02490219 n02492035 n02492660 n02493509
        n02493793 n02494079 n02497673 n02500267 n02727426 n02793495 n02859443 n03028079 n03032252 n03457902 n03529860
        n03661043 n03781244 n03788195 n03877845 n03956157 n04081281 n04346328 n02687172 n02690373 n02692877 n02782093
        n02951358 n02981792 n03095699 n03344393 n03447447 n03662601 n03673027 n03947888 n04147183 n04266014 n04273569
        n04347754 n04483307 n04552348 n04606251 n04612504 n02979186 n02988304 n02992529 n03085013 n03187595 n03584254
        n03777754 n03782006 n03857828 n03902125 n04392985 n02776631 n02791270 n02871525 n02927161 n03089624 n03461385
        n04005630 n04200800 n04443257 n04462240 n02799071 n02802426 n03134739 n03445777 n03598930 n03942813 n04023962
        n04118538 n04254680 n04409515 n04540053 n06785654 n02667093 n02837789 n02865351 n02883205 n02892767 n02963159
        n03188531 n03325584 n03404251 n03534580 n03594734 n03595614 n03617480 n03630383 n03710721 n03770439 n03866082
        n03980874 n04136333 n04325704 n04350905 n04370456 n04371430 n04479046 n04591157 n02708093 n02749479 n02794156
        n02841315 n02879718 n02950826 n03196217 n03197337 n03467068 n03544143 n03692522 n03706229 n03773504 n03841143
        n03891332 n04008634 n04009552 n04044716 n04086273 n04090263 n04118776 n04141975 n04317175 n04328186 n04355338
        n04356056 n04376876 n04548280 n02672831 n02676566 n02787622 n02804610 n02992211 n03017168 n03110669 n03249569
        n03272010 n03372029 n03394916 n03447721 n03452741 n03494278 n03495258 n03720891 n03721384 n03838899 n03840681
        n03854065 n03884397 n04141076 n04311174 n04487394 n04515003 n04536866 n02825657 n02840245 n02843684 n02895154
        n03000247 n03146219 n03220513 n03347037 n03424325 n03527444 n03637318 n03657121 n03788365 n03929855 n04141327
        n04192698 n04229816 n04417672 n04423845 n04435653 n04507155 n04523525 n04589890 n04590129 n02910353 n03075370
        n03208938 n03476684 n03627232 n03803284 n03804744 n03874599 n04127249 n04153751 n04162706 n02951585 n03041632
        n03109150 n03481172 n03498962 n03649909 n03658185 n03954731 n03967562 n03970156 n04154565 n04208210
        """
    ),
    "val": _words(
        """
        n02099267 n02099429 n02099601 n02099712 n02099849 n02100236 n02100583 n02100735 n02100877 n02101006 n02101388
        n02101556 n02102040 n02102177 n02102318 n02102480 n02102973 n03207941 n03259280 n03297495 n03483316 n03584829
        n03761084 n04070727 n04111531 n04442312 n04517823 n04542943 n04554684 n02791124 n02804414 n02870880 n03016953
        n03018349 n03125729 n03131574 n03179701 n03201208 n03290653 n03337140 n03376595 n03388549 n03742115 n03891251
        n03998194 n04099969 n04344873 n04380533 n04429376 n04447861 n04550184 n02666196 n02977058 n03180011 n03485407
        n03496892 n03642806 n03832673 n04238763 n04243546 n04428191 n04525305 n06359193 n02966193 n02974003 n03425413
        n03532672 n03874293 n03944341 n03992509 n04019541 n04040759 n04067472 n04371774 n04372370 n02701002 n02704792
        n02814533 n02930766 n03100240 n03345487 n03417042 n03444034 n03445924 n03594945 n03670208 n03770679 n03777568
        n03785016 n03796401 n03930630 n03977966 n04037443 n04252225 n04285008 n04461696 n04467665
        """
    ),
    "test": _words(
        """
        n03314780 n07565083 n07579787 n07583066 n07584110 n07590611 n07613480 n07614500 n07615774 n07697313 n07697537
        n07802026 n07831146 n07836838 n07860988 n07873807 n07875152 n07880968 n07892512 n07920052 n07930864 n07932039
        n01440764 n01443537 n01484850 n01491361 n01494475 n01496331 n01498041 n02514041 n02526121 n02536864 n02606052
        n02607072 n02640242 n02641379 n02643566 n02655020 n02104029 n02104365 n02105056 n02105162 n02105251 n02105412
        n02105505 n02105641 n02105855 n02106030 n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574
        n02107683 n02107908 n02108000 n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063
        n02110185 n02110627 n02165105 n02165456 n02167151 n02168699 n02169497 n02172182 n02174001 n02177972 n02190166
        n02206856 n02219486 n02226429 n02229544 n02231487 n02233338 n02236044 n02256656 n02259212 n02264363 n02268443
        n02268853 n02276258 n02277742 n02279972 n02280649 n02281406 n02281787 n02788148 n02894605 n03000134 n03160309
        n03459775 n03930313 n04239074 n04326547 n04501370 n04604644 n02795169 n02808440 n02815834 n02823428 n02909870
        n02939185 n03063599 n03063689 n03633091 n03786901 n03937543 n03950228 n03983396 n04049303 n04398044 n04493381
        n04522168 n04553703 n04557648 n04560804 n04562935 n04579145 n04591713 n09193705 n09246464 n09256479 n09288635
        n09332890 n09399592 n09421951 n09428293 n09468604 n09472597 n07714571 n07714990 n07715103 n07716358 n07716906
        n07717410 n07717556 n07718472 n07718747 n07720875 n07730033 n07734744 n07742313 n07745940 n07747607 n07749582
        n07753113 n07753275 n07753592 n07754684 n07760859 n07768694
        """
    ),
}
